"""Held-out drift of ``--mode width`` on onnxruntime-fused exports: rotation (the default) against plain channel
pruning, each with and without the readers' re-fit.

Why: the width table's drift is measured on the exporter's two example inputs, which are also the calibration
data. Here the calibration set (64 random inputs) and the held-out set (32 others) are drawn apart, so the
cosine says how the pruned model generalises. The exports are untrained (``tools/fused_exports.py``), so these
are mechanics, not accuracy. Plain pruning is forced with ``importance="l2"`` (a criterion named means channels
chosen by it, as ``--importance l2`` does).

Run from the repository root (project venv; about a minute on 2 cores)::

    .venv/bin/python tools/fused_width_drift.py   # eager_gpt2_fused eager_vit_fused eager_bert_fused
    .venv/bin/python tools/fused_width_drift.py --only eager_gpt2_fused --ratio 0.5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune import PruneConfig, prune  # noqa: E402
from onnxprune.runtime.session import create_session, run_session  # noqa: E402

FOLDER = Path.home() / ".cache" / "onnxprune" / "fused-exports"
NAMES = ("eager_gpt2_fused", "eager_vit_fused", "eager_bert_fused")


def draw(example: Path, n: int, rng: np.random.Generator, seq: int = 16) -> dict[str, np.ndarray]:
    """``n`` random inputs shaped like the example's: images, token ids (vocabulary 1000), full masks."""
    out = {}
    with np.load(example) as ex:
        for k in ex.files:
            v = ex[k]
            if v.dtype.kind == "f":
                out[k] = rng.standard_normal((n, *v.shape[1:])).astype(v.dtype)
            elif k == "input_ids":
                out[k] = rng.integers(0, 1000, (n, seq)).astype(v.dtype)
            else:
                out[k] = (np.ones if k == "attention_mask" else np.zeros)((n, seq), v.dtype)
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(NAMES), help="model stems (default: %(default)s)")
    parser.add_argument("--ratio", type=float, default=0.25)
    args = parser.parse_args(argv)
    rows = ["| model | width method | re-fit | cosine (held out) | max\\|diff\\| | MACs kept | params kept |",
            "|---|---|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            path = FOLDER / f"{name}.onnx"
            rng = np.random.default_rng(0)
            calib, held = draw(path.with_suffix(".inputs.npz"), 64, rng), draw(path.with_suffix(".inputs.npz"), 32, rng)
            npz = Path(tmp) / f"{name}.calib.npz"
            np.savez(npz, **calib)
            ref = next(iter(run_session(create_session(path), held).values()))  # the first output
            methods: set[str] = set()
            for extra in ({}, {"importance": "l2"}):
                if extra and methods == {"plain"}:
                    continue  # rotation was refused: the default run was plain already
                for recover in ("lstsq", "none"):
                    result = prune(path, PruneConfig(mode="width", ratio=args.ratio, calib=str(npz), bench=False,
                                                     recover=recover, **extra))
                    got = next(iter(run_session(create_session(result.model), held).values()))
                    rep = result.report
                    methods.add(rep["width"]["method"])
                    macs, params = rep["macs_after"] / rep["macs_before"], rep["params_after"] / rep["params_before"]
                    rows.append(f"| `{name}` | {rep['width']['method']} | {recover} | {cosine(ref, got):.4f} | "
                                f"{float(np.abs(ref - got).max()):.3g} | {macs:.0%} | {params:.0%} |")
                    print(rows[-1], file=sys.stderr, flush=True)
    print("\n".join(rows))
    print(f"\nwith `python tools/fused_width_drift.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
