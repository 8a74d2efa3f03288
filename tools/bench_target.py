"""--target-speedup: is the plan allocated by sensitivity better than a uniform cut of the same latency?

Prunes a model with ``--target-speedup X`` (default flags otherwise; batch and threads as given), then finds
the uniform ratio whose plan the same calibrated latency model predicts at the same latency (bisection),
and compares the two plans:

* measured speedup of each over the original (``runtime.bench.benchmark``, alternating rounds);
* output error: relative L2 error of the whole model's outputs against the original's on ``--samples``
  seeded N(0, 1) inputs (``recovery.sensitivity.OutputErrorMeter``, no recovery). Not the Gram score:
  that is relative to the energy of the layers a plan cuts, so two plans cutting different layers are not
  on one scale;
* the data-free estimate the allocation ranked by (root of the summed squared per-group errors);
* the closed loop's checks (goal asked of the prediction, the plan's predicted and measured speedup with its
  95% interval) and the kept plan's prediction and measurement.

Usage:
  .venv/bin/python tools/bench_target.py [--model resnet50|models/X.onnx] [--target 2] [--batch 8]
                                         [--threads 1] [--runs 3] [--samples 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxprune import PruneConfig  # noqa: E402
from onnxprune.core.io import load_model, model_nbytes  # noqa: E402
from onnxprune.runtime.bench import benchmark  # noqa: E402
from onnxprune.speed import default_widths, latency_model  # noqa: E402
from onnxprune.speed_target import allocate_for_target, uniform_keep  # noqa: E402
from onnxprune.structured.analysis import analyze  # noqa: E402
from onnxprune.structured.plan import make_plan  # noqa: E402
from onnxprune.structured.surgery import apply_plan  # noqa: E402


def _model(name: str):
    if name == "resnet50":
        from tools.resnet50 import resnet50

        return resnet50(seed=0)
    return load_model(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--target", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--calib-samples", type=int, default=0,
                   help="rank groups by sensitivity on this many seeded N(0, 1) inputs (--calib) instead of the "
                        "data-free criterion; the comparison uses other seeds")
    p.add_argument("--json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    model = _model(args.model)
    calib = None
    if args.calib_samples:
        import tempfile

        import numpy as np

        from onnxprune.runtime.feeds import random_feeds as feeds

        calib = str(Path(tempfile.mkdtemp()) / "calib.npz")
        np.savez(calib, **feeds(model, seed=1000, batch=args.calib_samples))
    cfg = PruneConfig(target_speedup=args.target, validate=False, bench_batches=(args.batch,),
                      threads=args.threads, calib=calib)
    settings = default_widths(cfg, model_nbytes(model), model)  # the pipeline's default widths for this model's size
    dg = analyze(model)
    lm = latency_model(model, dg, settings, calibrate=True)
    ratios, info = allocate_for_target(model, dg, settings, lm)  # what prune() does with --target-speedup
    chooser = lm.choose if settings.round_to == "auto" else None
    target_plan = make_plan(model, dg, ratio=0.0, group_ratios=ratios, round_to=settings.round_to,
                            width_chooser=chooser)
    target_model = apply_plan(model, target_plan, dg=dg)
    table = lm.table(args.batch)
    assert table is not None and table.calibration is not None
    target_keep = {int(g): int(w) for g, w in info["widths"].items()}
    goal = table.predict_ms(target_keep)
    lo, hi = 0.0, 0.9
    for _ in range(12):  # uniform ratio at the same predicted latency
        mid = (lo + hi) / 2
        if table.predict_ms(uniform_keep(model, dg, settings, mid, lm)) > goal:
            lo = mid
        else:
            hi = mid
    uniform = make_plan(model, dg, ratio=hi, round_to=settings.round_to, width_chooser=chooser)
    uniform_model = apply_plan(model, uniform, dg=dg)
    report = benchmark([model, target_model, uniform_model], names=["original", "target", "uniform"],
                       batches=(args.batch,), threads=args.threads, runs=args.runs, warmup=1, memory=False)
    from onnxprune.recovery.latency_budget import data_free_errors
    from onnxprune.recovery.sensitivity import OutputErrorMeter
    from onnxprune.runtime.feeds import random_feeds

    data = [random_feeds(model, seed=i, batch=1) for i in range(args.samples)]
    meter = OutputErrorMeter(model, data, batch_size=1, max_samples=args.samples)
    free = {name: sum(errs[0] ** 2 for errs in data_free_errors(model, dg, [plan]).values()) ** 0.5
            for name, plan in (("target", target_plan), ("uniform", uniform))}
    out = {
        "model": args.model, "target": args.target, "batch": args.batch, "threads": args.threads,
        "allocation": info["allocation"], "checks": info["checks"],
        "target_plan_predicted": info["predicted_speedup"], "target_measured_by_checks": info["measured_speedup"],
        "target_check_interval": info.get("measured_interval"),
        "target_predicted": round(table.calibration.ms(table.layer_sum({})) / goal, 4),
        "target_measured": round(report.result("target", "cpu", args.batch).speedup, 4),
        "uniform_ratio": round(hi, 4),
        "uniform_predicted": round(table.calibration.ms(table.layer_sum({})) /
                                   table.predict_ms({g: len(k) for g, k in uniform.keep.items()}), 4),
        "uniform_measured": round(report.result("uniform", "cpu", args.batch).speedup, 4),
        "output_error_target": round(meter.error(target_model), 5),
        "output_error_uniform": round(meter.error(uniform_model), 5),
        "data_free_target": round(free["target"], 4), "data_free_uniform": round(free["uniform"], 4),
        "ideal_target": round(report.result("target", "cpu", args.batch).ideal_speedup, 4),
        "group_ratios": info["group_ratios"], "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(out, indent=1)
    sys.stdout.write(text + "\n")
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
