"""Prove a structured cut of a real export at other batch and sequence sizes than the analysed ones.

``onnxprune prune`` proves its cut on the sizes it analysed. Run-time shape arithmetic (``x.view(-1,
x.size(-1))``, ``repeat_kv``'s expand target, the head counts of reshape targets) must also hold at any other
size, which is what keeps the model's dynamic axes usable. This script analyses ``MODEL`` at batch 1 and the
example inputs' other sizes, cuts it with the default plan at ``--ratio`` and with a random plan keeping half of
every prunable group, and compares each pruned model with the original whose dropped channels' consumer weights
are zeroed (the oracle) in onnxruntime at the example inputs and at new batch and sequence sizes.

Usage: ``python tools/dynamic_axes_check.py MODEL.onnx [MODEL.inputs.npz] [--ratio 0.3]``; exits 1 when any
comparison differs by more than ``--atol`` (times the output scale).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxprune.core.io import load_model
from onnxprune.structured.analysis import analyze
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.plan import PrunePlan, make_plan
from onnxprune.structured.surgery import apply_plan

SIZES = ((3, 7), (2, 23))  # (batch, sequence) besides the example inputs'


def _run(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _resized(feeds: dict[str, np.ndarray], batch: int, seq: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """New inputs: token ids/masks ``[batch, seq]`` (masks all ones), float inputs with a new batch only."""
    out = {}
    for name, value in feeds.items():
        if value.dtype.kind in "iu" and value.ndim == 2:
            out[name] = np.ones((batch, seq), value.dtype) if "mask" in name else \
                rng.integers(0, int(value.max()) + 1, (batch, seq)).astype(value.dtype)
        else:
            out[name] = rng.standard_normal((batch, *value.shape[1:])).astype(value.dtype)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("inputs", type=Path, nargs="?", help="example inputs (default MODEL.inputs.npz)")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    feeds = dict(np.load(args.inputs or args.model.with_suffix(".inputs.npz")))
    model = load_model(args.model)
    dims: dict[str, int] = {}
    for vi in model.graph.input:
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.dim_param and vi.name in feeds:
                dims[d.dim_param] = 1 if axis == 0 else int(feeds[vi.name].shape[axis])
    dg = analyze(model, dims=dims)
    rng = np.random.default_rng(0)
    half = {g.id: np.sort(rng.choice(g.size, max(1, g.size // 2), replace=False)) for g in dg.prunable_groups}
    plans = {f"ratio {args.ratio}": make_plan(model, dg, ratio=args.ratio),
             "random half": PrunePlan(fingerprint=dg.fingerprint, keep=half,
                                      sizes={g.id: g.size for g in dg.prunable_groups})}
    token_inputs = any(v.dtype.kind in "iu" and v.ndim == 2 for v in feeds.values())
    print(f"{args.model.name}: {len(dg.prunable_groups)} prunable groups of {len(dg.groups)}, analysed at {dims}")
    worst = 0.0
    for title, plan in plans.items():
        pruned, reference = apply_plan(model, plan, dg=dg), zeroed_reference(model, dg, plan)
        cases = [("example inputs", feeds)]
        cases += [(f"batch {b}" + (f", sequence {s}" if token_inputs else ""), _resized(feeds, b, s, rng))
                  for b, s in SIZES]
        for what, case in cases:
            got, want = _run(pruned, case), _run(reference, case)
            diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) / max(1.0, float(np.max(np.abs(b))))
                       for a, b in zip(got, want, strict=True))
            worst = max(worst, diff)
            print(f"  {title:<12} {what:<24} outputs {[a.shape for a in got]}  max|diff|/scale {diff:.2e}")
    print(f"worst {worst:.2e} ({'pass' if worst <= args.atol else 'FAIL'} at {args.atol:g})")
    return 0 if worst <= args.atol else 1


if __name__ == "__main__":
    sys.exit(main())
