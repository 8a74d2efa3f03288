"""Time ``sensitivity`` (and the ``--target-macs 0.5`` budget) of one onnxprune tree on one model, in a fresh
process, with wall and CPU seconds: how the ResNet-50 row of README "Sensitivity and budgets" was measured
against the tree as the issue was filed (``git archive 46ef07e onnxprune | tar -x -C DIR``), whose run takes
more than an hour on 2 cores. With ``--against OTHER.json`` it also prints the Spearman rank correlation of the
two runs' group scores.

Usage:
  .venv/bin/python tools/sensitivity_baseline.py SRC (resnet50 | MODEL.onnx) OUT.json [--what sensitivity,budget]
                                                 [--against OTHER.json]

SRC: a folder holding an ``onnxprune`` package (this checkout for this tree). ``resnet50`` is ``tools/resnet50.py``
(seed 0), written beside OUT.json; calibration is ``tools/bench_sensitivity.py``'s (the model's shipped
``_calib.npz``, else 256 seeded N(0,1) samples).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_sensitivity import _fresh, calibration  # noqa: E402

from onnxprune.recovery.sensitivity import DEFAULT_RATIOS, spearman  # noqa: E402


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--what", default="sensitivity", help="comma-separated: sensitivity, budget")
    p.add_argument("--against", help="an earlier OUT.json: Spearman of the two runs' sensitivity scores")
    args = p.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.model == "resnet50":
        import onnx

        from tools.resnet50 import resnet50

        path = out.parent / "resnet50.onnx"
        if not path.exists():
            onnx.save(resnet50(seed=0), path)
    else:
        path = Path(args.model)
    calib, desc = calibration(path, 256, out.parent)
    res: dict[str, object] = {"src": args.src, "model": str(path), "calib": desc,
                              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    for what in args.what.split(","):
        cpu0, load0, t0 = _cpu_children(), os.getloadavg()[0], time.perf_counter()
        r = _fresh(str(Path(args.src).resolve()), str(path), calib, 256, DEFAULT_RATIOS, what)
        res[what] = {**r, "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(_cpu_children() - cpu0, 1),
                     "load_start": load0, "load_end": os.getloadavg()[0]}
        print(f"{what}: {res[what]['wall_s']} s wall, {res[what]['cpu_s']} CPU-s", flush=True)
        out.write_text(json.dumps(res, indent=1))
    if args.against and "sensitivity" in res:
        mine = res["sensitivity"]["scores"]  # type: ignore[index]
        other = json.loads(Path(args.against).read_text())["sensitivity"]["scores"]
        groups = sorted(other, key=int)
        print(f"Spearman over {len(groups)} groups: "
              f"{spearman([mine[g] for g in groups], [other[g] for g in groups]):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
