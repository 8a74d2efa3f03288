"""Measure SparseGPT against magnitude, Wanda and Wanda + lstsq, one shot and sequential; print a Markdown table.

Why: the claims about ``--importance sparsegpt`` and ``--sequential`` in the README must come from a command
anyone can rerun. Every number is top-1 accuracy on the held-out test split (``models/*_test.npz``);
calibration uses only ``models/*_calib.npz`` (256 samples from the training split). Each row is the same
thing ``onnxprune prune`` does with these flags (it calls the same functions):

  magnitude            --mode unstructured --sparsity 0.5            (or --mode nm --nm 2:4)
  wanda                ... --importance wanda --calib C --recover none
  wanda + lstsq        ... --importance wanda --calib C --recover lstsq
  sparsegpt            ... --importance sparsegpt --calib C --recover none
  sparsegpt + lstsq    ... --importance sparsegpt --calib C --recover lstsq
  magnitude + lstsq    ... --importance magnitude --calib C --recover lstsq
  (sequential)         ... --sequential

"output MSE" is the mean squared difference of the scores output (the first float output: logits, or the
MLP's probabilities) from the dense model's, on the test split: accuracy on 360 samples moves in steps of
0.28 points and often saturates, this does not.

Time is the wall time of the pruning (calibration passes, scoring, updates, re-fit), not of the evaluation,
in this process. BLAS threads are whatever the environment sets (``OPENBLAS_NUM_THREADS``); on a loaded shared
machine one thread is much faster than two for the small Cholesky factorizations SparseGPT does.

Usage:
  .venv/bin/python tools/sparsegpt_table.py [--models digits_mlp,digits_cnn,digits_transformer] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune.core.io import load_model  # noqa: E402
from onnxprune.recovery.sequential import sparsify_calibrated  # noqa: E402
from onnxprune.runtime.evaluate import evaluate_accuracy  # noqa: E402
from onnxprune.runtime.feeds import load_npz_feeds  # noqa: E402
from onnxprune.runtime.session import create_session, run_session  # noqa: E402
from onnxprune.sparse.sparsify import sparsify, sparsify_nm  # noqa: E402

MODELS = ROOT / "models"
#: (label, criterion, re-fit); magnitude alone needs no data and has no sequential variant.
METHODS = (("magnitude", "magnitude", False), ("magnitude + lstsq", "magnitude", True), ("wanda", "wanda", False),
           ("wanda + lstsq", "wanda", True), ("sparsegpt", "sparsegpt", False),
           ("sparsegpt + lstsq", "sparsegpt", True))


def _scores(model: object, feeds: dict) -> np.ndarray:
    session = create_session(model)  # type: ignore[arg-type]
    name = next(o.name for o in session.get_outputs() if "float" in o.type)
    return np.asarray(run_session(session, feeds)[name], dtype=np.float64)


def rows_for(name: str, patterns: list[str], dense_target: bool = True) -> list[dict]:
    model = load_model(MODELS / f"{name}.onnx")
    calib, test = MODELS / f"{name}_calib.npz", MODELS / f"{name}_test.npz"
    dense = float(evaluate_accuracy(model, test).top1)
    feeds = load_npz_feeds(test, model)
    dense_scores = _scores(model, feeds)
    rows = []
    for pattern in patterns:
        nm = (2, 4) if pattern == "2:4" else None
        for label, criterion, refit in METHODS:
            for sequential in (False, True):
                if criterion == "magnitude" and not refit and sequential:
                    continue
                start = time.perf_counter()
                if criterion == "magnitude" and not refit:
                    pruned = (sparsify(model, sparsity=0.5) if nm is None else sparsify_nm(model, n=2, m=4)).model
                    passes = 0
                else:
                    out = sparsify_calibrated(model, calib, criterion=criterion, sparsity=0.5, nm=nm, refit=refit,
                                              sequential=sequential, dense_target=dense_target)
                    pruned, passes = out.model, out.info["calibration"]["passes"]
                seconds = time.perf_counter() - start
                top1 = float(evaluate_accuracy(pruned, test).top1)
                mse = float(np.mean((_scores(pruned, feeds) - dense_scores) ** 2))
                row = {"model": name, "pattern": "50%" if nm is None else "2:4", "method": label,
                       "calibration": "sequential" if sequential else ("one-shot" if passes else "none"),
                       "passes": passes, "top1": top1, "dense": dense, "mse": mse, "seconds": seconds}
                rows.append(row)
                print(f"  {name:<19} {row['pattern']:<4} {label:<18} {row['calibration']:<10} "
                      f"top-1 {top1:.2%} (dense {dense:.2%}) mse {mse:.3g} {seconds:.2f} s", file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| model | sparsity | method | calibration | passes | top-1 (dense) | output MSE | time (s) |",
           "|---|---|---|---|---:|---|---:|---:|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['pattern']} | {r['method']} | {r['calibration']} | {r['passes']} | "
                   f"{r['top1']:.2%} ({r['dense']:.2%}) | {r['mse']:.3g} | {r['seconds']:.2f} |")
    return "\n".join(out)


def pivot(rows: list[dict]) -> str:
    """The same rows, one line per model, sparsity and calibration; cells ``top-1 / output MSE``."""
    labels = [label for label, _, _ in METHODS]
    out = ["| model | sparsity | calibration | " + " | ".join(labels) + " | time one-shot → sequential (s) |",
           "|---|---|---|" + "---|" * (len(labels) + 1)]
    for model in dict.fromkeys(r["model"] for r in rows):
        for pattern in ("50%", "2:4"):
            for calibration in ("one-shot", "sequential"):
                cells = []
                for label in labels:
                    r = next((r for r in rows if r["model"] == model and r["pattern"] == pattern
                              and r["method"] == label
                              and r["calibration"] in ((calibration, "none") if calibration == "one-shot"
                                                       else (calibration,))), None)
                    cells.append("" if r is None else f"{r['top1']:.2%} / {r['mse']:.3g}")
                times = [r["seconds"] for r in rows if r["model"] == model and r["pattern"] == pattern
                         and r["method"] == "sparsegpt"]
                when = f"sparsegpt {times[0]:.2f} → {times[1]:.2f}" if calibration == "one-shot" and len(times) == 2 \
                    else ""
                if any(cells):
                    out.append(f"| {model} | {pattern} | {calibration} | " + " | ".join(cells) + f" | {when} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="digits_mlp,digits_cnn,digits_transformer")
    parser.add_argument("--patterns", default="50%,2:4", help="comma-separated: 50%% (unstructured) and/or 2:4")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--self-target", action="store_true",
                        help="sequential rows aim at the dense weight on the pruned inputs (dense_target=False)")
    parser.add_argument("--from-json", help="print the tables of rows written earlier with --json; run nothing")
    args = parser.parse_args()
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
        print(markdown(rows) + "\n\n" + pivot(rows))
        return 0
    start = time.perf_counter()
    rows = [r for name in args.models.split(",")
            for r in rows_for(name.strip(), args.patterns.split(","), dense_target=not args.self_target)]
    print(markdown(rows))
    print()
    print(pivot(rows))
    print(f"\n(total {time.perf_counter() - start:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
