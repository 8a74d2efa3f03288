"""``onnxprune validate ORIGINAL PRUNED``: checker, strict shape inference, and drift measured in onnxruntime.

Pruning changes outputs on purpose, so by default the comparison is a measurement (cosine, top-1
agreement, max|diff| per output) and the command passes. Bounds the user sets (``--atol``, ``--rtol``,
``--min-cosine``, ``--min-top1``) are enforced. Exit status: 0 passed; 1 bad input (unreadable file, bad
option or data, a candidate that fails the checker or strict shape inference or does not take the
original's inputs); 2 usage; 4 a bound crossed, or an output that cannot be compared (missing, other shape
or dtype, NaN/Inf where the original has none).
"""

from __future__ import annotations

import argparse
import json
import sys

from onnxprune.cli.flags import add_old_spelling
from onnxprune.cli.options import add_runtime_options
from onnxprune.runtime.validate import DEFAULT_SAMPLES

#: Exit status when the candidate crossed a bound the user set (distinct from bad input, 1, and usage, 2).
EXIT_BOUND_CROSSED = 4


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "validate", help="check a pruned model and measure how far its outputs drift from the original's",
        description="Run onnx.checker (full check) and strict shape inference on PRUNED, then run both models "
                    "in onnxruntime on the same inputs and measure every output: cosine similarity, top-1/top-5 "
                    "agreement for [N, C] score outputs, max/mean abs and max rel diff. Drift is reported, not "
                    "judged, unless you set a bound; a crossed bound exits 4.",
    )
    p.add_argument("original", help="reference .onnx model")
    p.add_argument("pruned", help="candidate .onnx model")
    p.add_argument("--data", metavar="NPZ", help="inputs: .npz with one array per input name, axis 0 = samples "
                                                 "(default: seeded random inputs)")
    b = p.add_argument_group("bounds (none by default: drift is reported and the command passes)")
    b.add_argument("--atol", type=float, default=None,
                   help="fail (exit 4) when an output differs from the original's by more than this "
                        "(plus the --rtol part)")
    b.add_argument("--rtol", type=float, default=None, help="relative part of that tolerance (default 0)")
    b.add_argument("--min-cosine", type=float, default=None, metavar="C",
                   help="fail (exit 4) when a floating output's cosine similarity is below C, e.g. 0.99")
    b.add_argument("--min-top1", type=float, default=None, metavar="F",
                   help="fail (exit 4) when top-1 agreement of a class-score output is below F, e.g. 0.98")
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
    from onnxprune.report.drift import validation_text
    from onnxprune.runtime.bounds import DriftBounds
    from onnxprune.runtime.validate import validate_models

    bounds = DriftBounds(atol=args.atol, rtol=args.rtol, min_cosine=args.min_cosine, min_top1=args.min_top1)
    atol, rtol = bounds.tolerances()
    report = validate_models(
        args.original, args.pruned, data=args.data, providers=args.providers, atol=atol, rtol=rtol,
        dims=parse_dims(args.dim), seed=args.seed, samples=args.samples, batch_size=args.batch_size,
        threads=args.threads, report_only=True,
    )
    doc = report.to_dict()
    checks_failed = [c for c in report.checks if not c.passed]
    violations = bounds.violations(doc)
    doc["bounds"] = {"atol": bounds.atol, "rtol": bounds.rtol, "min_cosine": bounds.min_cosine,
                     "min_top1": bounds.min_top1}
    doc["violations"] = violations
    doc["passed"] = not checks_failed and not violations
    if args.json:
        print(json.dumps(doc, indent=2))
    elif not args.quiet:
        print(validation_text(doc, bounds=bounds.describe(), violations=violations))
    if checks_failed:
        sys.stderr.write(f"onnxprune: error: {report.summary()}\n")
        return 1
    if violations:
        more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
        sys.stderr.write(f"onnxprune: validation failed: {violations[0]}{more}\n")
        return EXIT_BOUND_CROSSED
    return 0
