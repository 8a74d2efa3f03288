"""``onnxprune validate ORIGINAL PRUNED``: checker, strict shape inference and outputs compared in onnxruntime.

Exit status 0 when everything passed, 1 when a check or a comparison failed (the one-line summary goes to
stderr) or on a user error.
"""

from __future__ import annotations

import argparse
import json
import sys

from onnxprune.cli.flags import add_old_spelling
from onnxprune.cli.options import add_runtime_options
from onnxprune.runtime.validate import DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_SAMPLES


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "validate", help="check a pruned model and compare its outputs with the original's",
        description="Run onnx.checker (full check) and strict shape inference on PRUNED, then run both models "
                    "in onnxruntime on the same inputs and compare every output (|pruned - original| <= "
                    "atol + rtol * |original|). Reports max/mean abs diff, max rel diff, cosine similarity, "
                    "top-1/top-5 agreement for [N, C] score outputs, and the tolerance that would have passed.",
    )
    p.add_argument("original", help="reference .onnx model")
    p.add_argument("pruned", help="candidate .onnx model")
    p.add_argument("--data", metavar="NPZ", help="inputs: .npz with one array per input name, axis 0 = samples "
                                                 "(default: seeded random inputs)")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"absolute tolerance (default {DEFAULT_ATOL:g})")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help=f"relative tolerance (default {DEFAULT_RTOL:g})")
    p.add_argument("--samples", type=int, default=None,
                   help=f"samples to compare (default: all of --data, else {DEFAULT_SAMPLES})")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="samples per run (default 1; a fixed batch dim wins)")
    add_old_spelling(p, "--batch", new="--batch-size", dest="batch_size", type=int)
    add_runtime_options(p, dim_help="value of a named dynamic input dim (repeatable); the first dim is the batch "
                                 "(--batch-size)", seed_help="seed of generated inputs (default 0)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON on stdout")
    return p


def run(args: argparse.Namespace) -> int:
    from onnxprune.config import parse_dims
    from onnxprune.runtime.validate import validate_models

    report = validate_models(
        args.original, args.pruned, data=args.data, providers=args.providers, atol=args.atol, rtol=args.rtol,
        dims=parse_dims(args.dim), seed=args.seed, samples=args.samples, batch_size=args.batch_size,
        threads=args.threads,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif not args.quiet:
        print(report.to_text())
    if not report.passed:
        sys.stderr.write(f"onnxprune: {report.summary()}\n")
        return 1
    return 0
