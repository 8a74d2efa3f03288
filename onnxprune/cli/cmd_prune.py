"""``onnxprune prune IN -o OUT``: structured, unstructured or N:M pruning, validated, then saved."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from typing import Any

from onnxprune.cli.flags import PRUNE_FLAGS, add_old_spelling, default_of
from onnxprune.config import PruneConfig
from onnxprune.config_rules import option_spelling


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from exc


def _round_to(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"'{text}' is neither auto nor an integer") from exc


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    d = default_of  # every default shown here is PruneConfig's own
    p = sub.add_parser(
        "prune", help="prune a model (structured, unstructured or N:M) and validate it",
        description="Prune IN and write OUT only if every check passes. Options of another mode are refused; "
                    "--sparsity, --layer-sparsity or --nm without --mode select that mode (and say so).")
    p.add_argument("model", help="input .onnx file (never modified)")
    p.add_argument("-o", "--output", required=True, help="output .onnx file (written only if every check passes)")
    p.add_argument("--mode", choices=["structured", "unstructured", "nm", "width", "depth"], default=None,
                   help=f"remove channels, zero single weights, N:M patterns, the residual stream's width "
                        f"(width: not exact, needs --calib), or whole residual blocks (depth: --remove-blocks N or "
                        f"--target-macs F, then channels too with --ratio) (default {d('mode')})")
    p.add_argument("--scope", choices=["layer", "global"], default=None,
                   help="structured/unstructured: rank within each channel group/layer, or all together under "
                        f"one global threshold (default {d('scope')})")
    p.add_argument("--importance", default=None,
                   help=f"criterion (default {d('importance')}): structured l1, l2, fpgm, bn_scale, random; "
                        "unstructured/nm magnitude (= l1 = l2); with --calib: activation, apoz, wanda; "
                        "structured with --calib: ablation (attention heads: output error with the head silenced); "
                        "unstructured/nm with --calib: sparsegpt (zeros and weight updates from each layer's "
                        "input Gram matrix)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seed for random criteria and generated inputs (default {d('seed')})")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (groups or layers, what is kept, predicted params/MACs) and write nothing")
    g = p.add_argument_group("unstructured and N:M")
    g.add_argument("--sparsity", type=float, default=None,
                   help=f"fraction of weights to zero (default {d('sparsity')})")
    g.add_argument("--layer-sparsity", action="append", default=None, metavar="PATTERN=S",
                   help="per-layer sparsity override by name pattern, e.g. 'conv1*=0.3' (repeatable)")
    g.add_argument("--min-size", type=int, default=None,
                   help=f"leave weights with fewer elements alone (default {d('min_size')})")
    g.add_argument("--nm", default=None, help=f"N:M pattern for --mode nm (default {d('nm')})")
    g.add_argument("--sparse-storage", action="store_true", default=None,
                   help="store zeros as sparse initializers (smaller file; onnxruntime densifies at load)")
    s = p.add_argument_group("structured")
    s.add_argument("--ratio", type=float, default=None,
                   help=f"fraction of channels to remove per group (default {d('ratio')})")
    add_old_spelling(s, "--global", new="--scope global", dest="scope", const="global", flag=True)
    s.add_argument("--round-to", type=_round_to, default=None, metavar="auto|K",
                   help="auto: per group, the kept width near the ratio that measured latency says is fastest; "
                        f"K: keep channel counts multiples of K (default {d('round_to')})")
    s.add_argument("--min-channels", type=int, default=None,
                   help=f"keep at least this many channels per group (default {d('min_channels')})")
    s.add_argument("--grouped-conv", default=None, choices=["within", "whole"],
                   help="grouped convs: remove the same channels inside every group, keeping group (within), "
                        f"or remove whole groups (whole) (default {d('grouped_conv')})")
    s.add_argument("--remove-blocks", type=int, default=None, metavar="N",
                   help="first remove N residual blocks (y = x + f(x) -> x), those whose last projection has the "
                        "smallest norm (with --calib: the smallest block influence); then cut channels at --ratio "
                        "(0, or --mode depth without --ratio, for depth only)")
    s.add_argument("--plan-in", help="apply a saved plan instead of ranking channels")
    s.add_argument("--plan-out", help="save the plan (kept channels per group) as JSON")
    p.add_argument("--exclude", action="append", default=None, metavar="PATTERN",
                   help="protect layers whose node or weight name matches (shell-style, repeatable)")
    c = p.add_argument_group("calibration, recovery and budgets")
    c.add_argument("--calib", help="calibration inputs .npz (keys = input names, leading axis = samples)")
    c.add_argument("--recover", choices=["none", "bias", "lstsq"], default=None,
                   help="repair remaining weights (default: bias with --calib, else none)")
    c.add_argument("--sequential", action="store_true", default=None,
                   help="unstructured/nm with --calib: measure each layer on the model already pruned (and "
                        "re-fitted) before it, one calibration pass per stage of layers (default: one pass on "
                        "the dense model)")
    c.add_argument("--untie-embeddings", action="store_true", default=None,
                   help="width: give a tied LM head its own weight (the embedding table is then stored twice, "
                        "e.g. GPT-2 +31%% parameters); default: the head stays tied, through a k x k adapter when "
                        "its re-fit or a folded norm scale needs one")
    c.add_argument("--keep-tokens", metavar="FILE|calib",
                   help="language models, any mode: keep only these token ids (a text, .npy or .npz file of ids, "
                        "or calib: the ids in --calib) in the embedding table and the LM head; other ids are read "
                        "as --unknown-token; the kept ids go to the model's metadata (onnxprune.kept_token_ids)")
    c.add_argument("--unknown-token", type=int, metavar="ID",
                   help="with --keep-tokens: the kept id that every other id is read as (default: the smallest "
                        "kept id)")
    c.add_argument("--target-macs", type=float,
                   help="keep at most this fraction of MACs (default: no budget); with --mode depth, by removing "
                        "the fewest lowest-scored residual blocks")
    c.add_argument("--target-params", type=float,
                   help="keep at most this fraction of parameters (default: no budget)")
    c.add_argument("--target-speedup", type=float, metavar="X",
                   help="structured: per-group widths by latency saved per unit of sensitivity (--calib; "
                        "without it a data-free criterion), predicted to reach this speedup on the first "
                        "--batches size and checked by timing the plan (default: no budget)")
    c.add_argument("--target-latency", type=float, metavar="MS",
                   help="structured: the same for a latency in milliseconds (default: no budget)")
    c.add_argument("--max-error", type=float,
                   help="with a budget and --calib: stop before the calibration output error exceeds this")
    c.add_argument("--exact-sensitivity", dest="sensitivity_method", action="store_const", const="model",
                   default=None, help="with a budget: measure every candidate on the whole model (slow reference) "
                                      "instead of Gram scores anchored by one whole-model run per group")
    c.add_argument("--anchor-samples", metavar="N|all", default=None,
                   help="with a budget: samples each group's Gram anchor runs on (the first batches holding N; "
                        f"'all': every sample) (default {d('anchor_samples')})")
    c.add_argument("--executor", choices=["local", "processes", "ray"], default=None,
                   help="with a budget: run whole-model candidate measurements here, in worker processes or on "
                        "Ray (default local)")
    c.add_argument("--workers", type=int, default=None,
                   help="worker processes (processes), or candidates run at a time on Ray and the CPUs of the "
                        "local cluster it starts (ray) (default: one per core)")
    c.add_argument("--ray-address", metavar="ADDRESS", default=None,
                   help="with --executor ray: the cluster to join (default: start a local one)")
    c.add_argument("--eval-data", help="labelled .npz to report accuracy before/after")
    c.add_argument("--labels", default=None, help=f"labels key in --eval-data (default {d('labels')})")
    v = p.add_argument_group("validation and benchmark")
    v.add_argument("--no-validate", dest="validate", action="store_false", default=None,
                   help="skip the onnxruntime checks (default: validate)")
    v.add_argument("--data", help="validation inputs .npz (default: --eval-data, else --calib, else seeded random)")
    v.add_argument("--atol", type=float, default=None,
                   help=f"absolute tolerance of the exactness check (default {d('atol'):g})")
    v.add_argument("--rtol", type=float, default=None,
                   help="relative tolerance, as a share of each output's max|original|, of the exactness check "
                        f"(default {d('rtol'):g})")
    v.add_argument("--dim", action="append", default=None, metavar="NAME=VALUE",
                   help="size of a dynamic input axis, by dim name or INPUT:AXIS (index or name), e.g. "
                        "--dim sequence=128 or --dim x:2=320 (default: from the data, else chosen and reported)")
    v.add_argument("--providers", default=None,
                   help=f"comma-separated: cpu, cuda, ... (default {','.join(d('providers'))})")
    v.add_argument("--bench", action="store_true", default=None,
                   help="append a before/after benchmark (default: on for structured prunes of small models)")
    v.add_argument("--no-bench", dest="bench", action="store_false", default=None,
                   help="no benchmark, not even the automatic one of small models (nor the never-slower check)")
    v.add_argument("--batches", type=_csv_ints, default=None, metavar="B,B,...",
                   help=f"with --bench: batch sizes (default {','.join(map(str, d('bench_batches')))})")
    add_old_spelling(v, "--batch", new="--batches", dest="batches", type=_csv_ints)
    v.add_argument("--runs", type=int, default=None, help=f"with --bench: timed runs (default {d('bench_runs')})")
    v.add_argument("--warmup", type=int, default=None,
                   help=f"with --bench: untimed runs (default {d('bench_warmup')})")
    v.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    v.add_argument("--allow-slower", action="store_true", default=None,
                   help="save the result even when the benchmark finds it slower than the original")
    v.add_argument("--latency-budget", type=float, default=None, metavar="S",
                   help="seconds of layer timing --round-to auto may spend; groups past it round up to 8 "
                        f"(default {d('latency_budget'):g})")
    v.add_argument("--no-cache", dest="latency_cache", action="store_false", default=None,
                   help="do not read or write the measured-latency cache (~/.cache/onnxprune/latency)")
    o = p.add_argument_group("output")
    o.add_argument("--report", help="write the JSON report here ('-' or /dev/stdout: print it on stdout)")
    o.add_argument("--report-md", help="write a Markdown report here")
    o.add_argument("--plot", help='write a PNG plot here (needs: pip install -e ".[plot]")')
    o.add_argument("--external-data", action="store_true", default=None,
                   help="store weights in OUT.data beside the model (default: automatic above 2 GB)")
    return p


#: argparse destination -> PruneConfig parameter, where they differ.
_DEST_TO_PARAM = {"data": "validation_data", "batches": "bench_batches", "runs": "bench_runs",
                  "warmup": "bench_warmup", "dim": "dims"}


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    """Map parsed arguments onto the one :class:`PruneConfig` the API uses too.

    Only the options given on the command line are passed (argparse defaults are ``None``), so the config
    knows what was asked for: an option of another mode is refused, ``--sparsity`` alone selects unstructured.
    Messages name flags: call it under ``option_spelling(PRUNE_FLAGS)``.
    """
    from onnxprune.config import parse_dims
    from onnxprune.recovery.sensitivity import parse_anchor_samples
    from onnxprune.sparse.sparsify import parse_layer_sparsity

    convert: dict[str, Any] = {
        "layer_sparsity": parse_layer_sparsity, "dim": parse_dims, "exclude": tuple,
        "providers": lambda text: tuple(x.strip() for x in text.split(",") if x.strip()),
        "anchor_samples": lambda text: parse_anchor_samples(text, flag="--anchor-samples"),
    }
    params = {f.name for f in dataclasses.fields(PruneConfig)}
    options: dict[str, Any] = {}
    for dest, value in vars(args).items():
        param = _DEST_TO_PARAM.get(dest, dest)
        if value is None or param not in params:
            continue
        options[param] = convert[dest](value) if dest in convert else value
    return PruneConfig(**options)


def _check_side_outputs(args: argparse.Namespace) -> None:
    """Refuse bad report/plot paths before any work, so a failure never follows a saved model."""
    from onnxprune.core.errors import OutputError
    from onnxprune.core.io import check_output_path, same_file

    for option, path in (("--report", args.report), ("--report-md", args.report_md), ("--plot", args.plot)):
        if path is None:
            continue
        if same_file(path, args.output) or str(path) == str(args.output):
            raise OutputError(f"{option} {path} is the output model path; choose another file")
        check_output_path(path, inputs=(args.model,), stream=True)
    if args.plot:
        import importlib.util

        from onnxprune.core.errors import ConfigError

        if importlib.util.find_spec("matplotlib") is None:
            raise ConfigError('--plot needs matplotlib; install it with: pip install -e ".[plot]"')


def run(args: argparse.Namespace) -> int:
    from onnxprune.pipeline import prune

    with option_spelling(PRUNE_FLAGS):  # messages name flags (--ratio), not parameters (ratio)
        config = config_from_args(args)
        if args.dry_run:
            from onnxprune.cli.dry_run import check_dry_run, dry_run

            check_dry_run(args)
            return dry_run(args.model, config, quiet=args.quiet)
        _check_side_outputs(args)
        result = prune(args.model, config, output=args.output)
    if args.report:
        result.save_report(args.report)
    if args.report_md:
        from onnxprune.report.markdown import write_markdown_report

        write_markdown_report(args.report_md, report=result.report)
    if args.plot:
        from onnxprune.report.plots import plot_report

        plot_report(args.plot, report=result.report)
    if not args.quiet:
        from onnxprune.cli.summary import print_summary
        from onnxprune.core.io import names_stdout

        # A report sent to stdout (--report -) must stay parseable: the summary goes to stderr then.
        to_stdout = any(names_stdout(p) for p in (args.report, args.report_md, args.plot) if p)
        with contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext():
            print_summary(result.report, args.output, verbose=args.verbose)
    return 0
