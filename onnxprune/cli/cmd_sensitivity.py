"""``onnxprune sensitivity IN --calib data.npz``: rank channel groups by how much pruning each alone hurts."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sensitivity",
        help="prune each channel group alone at several ratios; rank groups by output error (and accuracy)",
        description="For every prunable channel group alone, remove a share of its channels and measure the "
                    "relative L2 error of the model outputs against the original on the calibration set "
                    "(and top-1 accuracy with --eval-data). Groups are listed least sensitive first.",
    )
    p.add_argument("model", help="input .onnx file")
    p.add_argument("--calib", required=True, metavar="DATA.npz",
                   help="calibration inputs (one array per model input, leading axis = samples)")
    p.add_argument("--eval-data", metavar="TEST.npz", help="labelled data for top-1 accuracy per candidate")
    p.add_argument("--labels", default="labels", help="key of the labels in --eval-data (default: labels)")
    p.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7",
                   help="comma-separated shares of a group's channels to remove (default 0.1,...,0.7)")
    p.add_argument("--importance", default="l2", help="criterion choosing the channels (default l2)")
    p.add_argument("--recover", default="none", choices=("none", "bias", "lstsq"),
                   help="recovery applied to each candidate before measuring (default none)")
    p.add_argument("--method", choices=("gram", "model"), default="gram",
                   help="gram: score candidates from Gram matrices, one whole-model run per group (default); "
                        "model: run every candidate on the whole model (slow reference)")
    p.add_argument("--anchor-samples", metavar="N|all", default=None,
                   help="gram: calibration samples each group's one whole-model anchor runs on (the first batches "
                        "holding N; 'all': every sample, exact anchors; default 64)")
    p.add_argument("--executor", choices=("local", "processes", "ray"), default="local",
                   help="run whole-model measurements here, in worker processes or on Ray (default local)")
    p.add_argument("--ray-address", metavar="ADDRESS", help="Ray cluster to join (default: start a local one)")
    p.add_argument("--workers", type=int,
                   help="worker processes (processes), or candidates run at a time on Ray and the CPUs of the local "
                        "cluster it starts (ray) (default: one per core)")
    p.add_argument("--max-samples", type=int, default=256, help="calibration samples used (default 256)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", metavar="FILE.png", help='save error-vs-ratio curves (needs: pip install -e ".[plot]")')
    return p


def run(args: argparse.Namespace) -> int:
    import onnxprune.recovery.data_criteria  # noqa: F401 - registers the data-aware criteria
    from onnxprune.core.errors import ConfigError
    from onnxprune.recovery.sensitivity import DEFAULT_ANCHOR_SAMPLES, parse_anchor_samples, parse_ratios, sensitivity

    if args.max_samples is not None and args.max_samples < 1:
        raise ConfigError(f"--max-samples must be >= 1, got {args.max_samples}")
    anchors = (DEFAULT_ANCHOR_SAMPLES if args.anchor_samples is None
               else parse_anchor_samples(args.anchor_samples, flag="--anchor-samples"))
    if args.plot:
        from onnxprune.core.io import check_output_path

        check_output_path(args.plot, inputs=(args.model,), stream=True)
    report = sensitivity(args.model, args.calib, ratios=parse_ratios(args.ratios), eval_data=args.eval_data,
                         importance=args.importance, recover=args.recover, max_samples=args.max_samples,
                         labels=args.labels, method=args.method, executor=args.executor, workers=args.workers,
                         ray_address=args.ray_address, anchor_samples=anchors)
    if args.plot:
        from onnxprune.report.plots import plot_sensitivity

        plot_sensitivity(report, args.plot)
    if args.json:
        print(report.to_json())
        return 0
    if args.quiet:
        return 0
    acc = "" if report.accuracy is None else f", original top-1 {report.accuracy:.2%}"
    print(f"sensitivity of {args.model}: {len(report.groups)} prunable groups, {report.samples} calibration "
          f"samples, importance {report.importance}, recover {report.recover}, method {report.method}{acc}")
    print("error = relative L2 of the outputs vs the original (||y - y_ref|| / ||y_ref||), least sensitive first")
    print(report.table())
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0
