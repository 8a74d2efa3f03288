"""How long do calibration and least-squares re-fit take on a ResNet-50-sized model?

Builds the full-size ResNet-50 of ``tools/resnet50.py`` (random weights, 224×224), prunes every prunable
channel group by ``--ratio`` (l2), then times, each on its own:

* ``calibrate``: one onnxruntime pass over ``--samples`` inputs collecting the float64 input Gram matrix
  (im2col for 3×3 convs) of every layer that lost input channels (``collect_stats(gram_for=...)``);
* ``refit``: :func:`onnxprune.recovery.recover.recover_structured` with ``method="lstsq"`` from those statistics;
* ``masked``: optionally (``--masked``), the masked re-fit of one 512×4608 layer at 50% unstructured sparsity
  (``masked_refit``, conjugate gradients), the largest reduction width in ResNet-50.

Inputs are seeded standard-normal images, so the figures are about speed, not accuracy. The target is
calibration + re-fit under 5 minutes on 2 CPU cores with 256 samples.

Usage:
  .venv/bin/python tools/bench_calibration.py [--samples 256] [--batch 32] [--ratio 0.3] [--masked]
                                              [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune.recovery.calibrate import collect_stats  # noqa: E402
from onnxprune.recovery.recover import recover_structured, sink_cuts  # noqa: E402
from onnxprune.recovery.solvers import masked_refit  # noqa: E402
from onnxprune.structured.analysis import analyze  # noqa: E402
from onnxprune.structured.plan import make_plan  # noqa: E402
from onnxprune.structured.surgery import apply_plan  # noqa: E402
from tools.resnet50 import resnet50  # noqa: E402


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--masked", action="store_true", help="also time a 512x4608 masked re-fit")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "samples": args.samples,
        "batch": args.batch, "ratio": args.ratio,
        "command": "python tools/bench_calibration.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    t = time.perf_counter()
    model = resnet50(seed=0, batch="N")
    dg = analyze(model)
    plan = make_plan(model, dg, ratio=args.ratio)
    pruned = apply_plan(model, plan, dg=dg)
    cuts = sink_cuts(model, dg, plan)
    results["prune_s"] = round(time.perf_counter() - t, 2)
    results["refit_layers"] = len(cuts)
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    # one float64 K×K matrix per layer, K = input channels × kernel taps
    results["gram_mb"] = round(sum(8 * int(np.prod(dims[c.weight][1:])) ** 2 for c in cuts) / 2**20, 1)
    print(f"prune: {results['prune_s']} s, {len(cuts)} layers to re-fit, Gram matrices {results['gram_mb']} MB",
          file=sys.stderr)

    rng = np.random.default_rng(0)

    def batches():
        for start in range(0, args.samples, args.batch):
            n = min(args.batch, args.samples - start)
            yield {"input": rng.standard_normal((n, 3, 224, 224), dtype=np.float32)}

    input_name = next(i.name for i in model.graph.input)
    if input_name != "input":
        raise SystemExit(f"unexpected input name {input_name}")
    t = time.perf_counter()
    stats = collect_stats(model, batches(), gram_for=[c.key for c in cuts])
    results["calibrate_s"] = round(time.perf_counter() - t, 1)
    print(f"calibrate: {results['calibrate_s']} s", file=sys.stderr)
    t = time.perf_counter()
    recover_structured(model, pruned, dg, plan, stats, method="lstsq")
    results["refit_s"] = round(time.perf_counter() - t, 1)
    results["total_s"] = round(float(results["calibrate_s"]) + float(results["refit_s"]), 1)
    print(f"refit: {results['refit_s']} s; calibrate + refit {results['total_s']} s", file=sys.stderr)
    if args.masked:
        r = np.random.default_rng(1)
        x = r.standard_normal((8192, 4608)).astype(np.float32)
        gram = (x.T @ x).astype(np.float64)
        w = r.standard_normal((512, 4608))
        t = time.perf_counter()
        masked_refit(w, r.random(w.shape) > 0.5, gram)
        results["masked_512x4608_s"] = round(time.perf_counter() - t, 1)
        print(f"masked re-fit 512x4608: {results['masked_512x4608_s']} s", file=sys.stderr)
    results["peak_rss_mb"] = round(_peak_mb())
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
