"""``onnxprune prune IN -o OUT``: structured, unstructured or N:M pruning, validated, then saved."""

from __future__ import annotations

import argparse
from typing import Any

from onnxprune.config import PruneConfig


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from exc


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("prune", help="prune a model (structured, unstructured or N:M) and validate it")
    p.add_argument("model", help="input .onnx file (never modified)")
    p.add_argument("-o", "--output", required=True, help="output .onnx file (written only if every check passes)")
    p.add_argument("--mode", default="structured", choices=["structured", "unstructured", "nm"])
    g = p.add_argument_group("unstructured and N:M")
    g.add_argument("--sparsity", type=float, default=0.5, help="fraction of weights to zero (default 0.5)")
    g.add_argument("--scope", default="layer", choices=["layer", "global"],
                   help="same sparsity per layer, or one global threshold")
    g.add_argument("--layer-sparsity", action="append", default=[], metavar="PATTERN=S",
                   help="per-layer sparsity override by name pattern, e.g. 'conv1*=0.3' (repeatable)")
    g.add_argument("--min-size", type=int, default=0, help="leave weights with fewer elements alone")
    g.add_argument("--nm", default="2:4", help="N:M pattern for --mode nm (default 2:4)")
    g.add_argument("--sparse-storage", action="store_true",
                   help="store zeros as sparse initializers (smaller file; onnxruntime densifies at load)")
    s = p.add_argument_group("structured")
    s.add_argument("--ratio", type=float, default=0.3, help="fraction of channels to remove per group")
    s.add_argument("--global", dest="global_rank", action="store_true",
                   help="rank all groups' channels together under one threshold")
    s.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of K")
    s.add_argument("--min-channels", type=int, default=1, help="keep at least this many channels per group")
    s.add_argument("--importance", default="l2",
                   help="criterion: l1, l2, fpgm, bn_scale, random; with --calib: activation, apoz, wanda")
    s.add_argument("--seed", type=int, default=0, help="seed for random criteria and generated inputs")
    s.add_argument("--plan-in", help="apply a saved plan instead of ranking channels")
    s.add_argument("--plan-out", help="save the plan (kept channels per group) as JSON")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="protect layers whose node or weight name matches (shell-style, repeatable)")
    d = p.add_argument_group("calibration, recovery and budgets")
    d.add_argument("--calib", help="calibration inputs .npz (keys = input names, leading axis = samples)")
    d.add_argument("--recover", choices=["none", "bias", "lstsq"], default=None,
                   help="repair remaining weights (default: bias with --calib, else none)")
    d.add_argument("--target-macs", type=float, help="keep at most this fraction of MACs")
    d.add_argument("--target-params", type=float, help="keep at most this fraction of parameters")
    d.add_argument("--max-error", type=float, help="stop before the calibration output error exceeds this")
    d.add_argument("--exact-sensitivity", dest="sensitivity_method", action="store_const", const="model",
                   default="gram", help="budgets measure every candidate on the whole model (slow reference) "
                                        "instead of from Gram matrices anchored by one run per group")
    d.add_argument("--executor", choices=["local", "processes", "ray"], default="local",
                   help="run whole-model candidate measurements here, in worker processes or on Ray (default local)")
    d.add_argument("--ray-address", metavar="ADDRESS", help="Ray cluster to join (default: start a local one)")
    d.add_argument("--workers", type=int, help="worker processes for --executor processes (default: one per core)")
    d.add_argument("--eval-data", help="labelled .npz to report accuracy before/after")
    d.add_argument("--labels", default="labels", help="labels key in --eval-data (default labels)")
    v = p.add_argument_group("validation and benchmark")
    v.add_argument("--no-validate", dest="validate", action="store_false", help="skip the onnxruntime checks")
    v.add_argument("--data", help="validation inputs .npz (default: seeded random inputs)")
    v.add_argument("--atol", type=float, default=1e-4)
    v.add_argument("--rtol", type=float, default=1e-3)
    v.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE", help="value of a dynamic dimension")
    v.add_argument("--providers", default="cpu", help="comma-separated: cpu,cuda")
    v.add_argument("--bench", action="store_true", help="append a before/after benchmark")
    v.add_argument("--batch", type=_csv_ints, default=(1, 8), help="benchmark batch sizes (default 1,8)")
    v.add_argument("--runs", type=int, default=20)
    v.add_argument("--warmup", type=int, default=3)
    v.add_argument("--threads", type=int, default=None)
    o = p.add_argument_group("output")
    o.add_argument("--report", help="write the JSON report here")
    o.add_argument("--report-md", help="write a Markdown report here")
    o.add_argument("--plot", help="write a PNG plot here (needs the plot extra)")
    o.add_argument("--external-data", action="store_true", default=None,
                   help="store weights in OUT.data beside the model (automatic above 2 GB)")
    return p


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    """Map parsed arguments onto the one :class:`PruneConfig` the API uses too."""
    from onnxprune.config import parse_dims
    from onnxprune.sparse.sparsify import parse_layer_sparsity

    return PruneConfig(
        mode=args.mode, sparsity=args.sparsity, scope=args.scope,
        layer_sparsity=parse_layer_sparsity(args.layer_sparsity),
        min_size=args.min_size, nm=args.nm, sparse_storage=args.sparse_storage, ratio=args.ratio,
        global_rank=args.global_rank, round_to=args.round_to, min_channels=args.min_channels,
        importance=args.importance, seed=args.seed, plan_in=args.plan_in, plan_out=args.plan_out,
        exclude=tuple(args.exclude), calib=args.calib, recover=args.recover, target_macs=args.target_macs,
        target_params=args.target_params, max_error=args.max_error,
        sensitivity_method=args.sensitivity_method, executor=args.executor, workers=args.workers,
        ray_address=args.ray_address,
        eval_data=args.eval_data, labels=args.labels,
        validate=args.validate, atol=args.atol, rtol=args.rtol,
        dims=parse_dims(args.dim),
        providers=tuple(x.strip() for x in args.providers.split(",") if x.strip()),
        validation_data=args.data, bench=args.bench, bench_batches=tuple(args.batch), bench_runs=args.runs,
        bench_warmup=args.warmup, threads=args.threads, external_data=args.external_data,
    )


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


def print_summary(report: dict[str, Any], output: str) -> None:
    """The short before/after table the CLI prints."""
    rows = [
        ("params" + (" (non-zero)" if report["mode"] != "structured" else ""),
         report["params_before"], report["params_after"]),
        ("MACs (batch 1)", report["macs_before"], report["macs_after"]),
        ("file size (bytes)", report["file_size_before"], report["file_size_after"]),
    ]
    print(f"onnxprune prune --mode {report['mode']}  ->  {output}")
    print(f"  {'':<22}{'before':>12}{'after':>12}{'ratio':>9}")
    for label, before, after in rows:
        ratio = f"{after / before:.3f}" if before else "-"
        print(f"  {label:<22}{_human(before):>12}{_human(after):>12}{ratio:>9}")
    if "sparsity" in report:
        print(f"  sparsity achieved     {report['sparsity']['overall']:.4f}")
    if "groups" in report:
        pruned = [g for g in report["groups"] if g.get("size_after", g.get("size_before")) != g.get("size_before")]
        print(f"  channel groups        {len(pruned)} pruned, {len(report.get('blocked', []))} blocked, "
              f"coverage {report.get('coverage', 0.0):.1%}")
    validation = report.get("validation")
    if validation:
        for kind, label in (("exact", "exactness"), ("drift", "drift vs original")):
            if kind in validation:
                print(f"  {label:<22}{_comparison_line(validation[kind], exact=kind == 'exact')}")
    if "accuracy" in report:
        b, a = report["accuracy"]["before"], report["accuracy"]["after"]
        print(f"  top-1 accuracy        {b['top1']:.4f} -> {a['top1']:.4f} (n={a['n']})")
    for skipped in report.get("skipped", [])[:10]:
        print(f"  skipped {skipped['name']}: {skipped['reason']}")
    print(f"  time                  {report['seconds']:.2f} s")


def _comparison_line(validation: dict[str, Any], *, exact: bool) -> str:
    """One line per comparison: verdict and the worst output's figures, for each provider."""
    parts = []
    for provider, cmp in validation.get("comparisons", {}).items():
        outs = cmp.get("outputs", [])
        if not outs:
            continue
        worst = max(outs, key=lambda o: float(o["max_abs"]) if o["max_abs"] is not None else 0.0)
        if exact:
            verdict = "pass" if cmp.get("within_tolerance") else "FAIL"
            parts.append(f"{provider}: {verdict}, max|diff| {float(worst['max_abs']):.2e} "
                         f"(pruned vs original with dropped channels silenced)")
        else:
            text = f"{provider}: cosine {float(worst['cosine']):.4f}, max|diff| {float(worst['max_abs']):.3g}"
            if worst.get("top1") is not None:
                text += f", top-1 agreement {float(worst['top1']):.1%}"
            parts.append(text)
    line = "; ".join(parts) or validation.get("summary", "")
    return f"{line} [{validation['samples']} samples, {validation['inputs']}]" if "inputs" in validation else line


def _check_side_outputs(args: argparse.Namespace) -> None:
    """Refuse bad report/plot paths before any work, so a failure never follows a saved model."""
    from onnxprune.core.errors import OutputError
    from onnxprune.core.io import check_output_path, same_file

    for option, path in (("--report", args.report), ("--report-md", args.report_md), ("--plot", args.plot)):
        if path is None:
            continue
        if same_file(path, args.output) or str(path) == str(args.output):
            raise OutputError(f"{option} {path} is the output model path; choose another file")
        check_output_path(path, inputs=(args.model,))
    if args.plot:
        import importlib.util

        from onnxprune.core.errors import ConfigError

        if importlib.util.find_spec("matplotlib") is None:
            raise ConfigError("--plot needs matplotlib; install it with: pip install onnxprune[plot]")


def run(args: argparse.Namespace) -> int:
    from onnxprune.pipeline import prune

    config = config_from_args(args)
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
        print_summary(result.report, args.output)
    return 0
