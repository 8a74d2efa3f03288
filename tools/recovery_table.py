"""Measure accuracy recovery without retraining on the trained sample models; print a Markdown table.

Why: the claims "structured cut by 30% of MACs costs ≤ 1 point with lstsq", "lstsq beats magnitude-only
at 50%", "unstructured 70% / 2:4 costs ≤ 1 point with data-aware criteria + re-fit" and "a transformer's
FFN cut by 30% keeps cosine ≥ 0.98" must come from a command anyone can rerun. Every number is measured
on the held-out test split (``models/*_test.npz``); calibration uses only ``models/*_calib.npz`` (drawn
from the training split, disjoint from test).

Settings:
  * CNN structured: one uniform ratio, the smallest (step 0.01) whose pruned model keeps at most the target
    MACs fraction; the *same* channels (l2 magnitude, or the named criterion) are then recovered by each
    method, so rows differ only by recovery. ``budget`` rows let :mod:`onnxprune.recovery.budget` choose per-group
    ratios from a sensitivity run (recover=lstsq) instead.
  * MLP sparse: layer-wise 70% unstructured or 2:4 on every prunable weight.
  * Transformer FFN: both feed-forward groups (linear1 → linear2) at ratio 0.3; cosine similarity is the
    mean per-sample cosine between the pruned and the original logits on the test split.

Usage:
  .venv/bin/python tools/recovery_table.py [--json out.json]
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

import onnxprune.recovery.data_criteria  # noqa: E402,F401 - registers the data-aware criteria
from onnxprune.core.io import load_model  # noqa: E402
from onnxprune.core.stats import model_stats  # noqa: E402
from onnxprune.recovery.budget import allocate  # noqa: E402
from onnxprune.recovery.data_criteria import collect_group_stats, sparse_scores  # noqa: E402
from onnxprune.recovery.recover import recover_sparse, recover_structured  # noqa: E402
from onnxprune.recovery.sensitivity import sensitivity  # noqa: E402
from onnxprune.runtime.evaluate import evaluate_accuracy  # noqa: E402
from onnxprune.runtime.feeds import load_npz_feeds  # noqa: E402
from onnxprune.runtime.session import create_session, run_session  # noqa: E402
from onnxprune.sparse.sparsify import sparsify, sparsify_nm  # noqa: E402
from onnxprune.structured.analysis import analyze  # noqa: E402
from onnxprune.structured.plan import make_plan  # noqa: E402
from onnxprune.structured.surgery import apply_plan  # noqa: E402

MODELS = ROOT / "models"


def _paths(name: str) -> tuple[Path, Path, Path]:
    return MODELS / f"{name}.onnx", MODELS / f"{name}_calib.npz", MODELS / f"{name}_test.npz"


def _top1(model: object, test: Path) -> float:
    return float(evaluate_accuracy(model, test).top1)


def _row(rows: list[dict], **kw: object) -> None:
    rows.append(kw)
    acc = kw.get("top1")
    print(f"  {kw['setting']:<34} {kw['method']:<28} "
          f"{'' if acc is None else f'top-1 {acc:.2%}'} {kw.get('extra', '')}", file=sys.stderr)


def cnn_rows(rows: list[dict], target: float) -> None:
    path, calib, test = _paths("digits_cnn")
    m = load_model(path)
    dg = analyze(m)
    base_macs = model_stats(m).macs
    base = _top1(m, test)
    setting = f"CNN structured, MACs -{round((1 - target) * 100)}%"
    ratio = next(r / 100 for r in range(1, 96)
                 if model_stats(apply_plan(m, make_plan(m, dg, ratio=r / 100), dg=dg)).macs <= target * base_macs)
    for importance in ("l2", "activation", "apoz", "wanda"):
        stats = collect_group_stats(m, dg, calib) if importance != "l2" else None
        plan = make_plan(m, dg, ratio=ratio, importance=importance, statistics=stats)
        pruned = apply_plan(m, plan, dg=dg)
        kept = model_stats(pruned).macs / base_macs
        methods = [("none", None), ("bias", calib), ("bias (data-free BN)", None), ("lstsq", calib)]
        if importance != "l2":
            methods = [("none", None), ("lstsq", calib)]
        for method, data in methods:
            t = time.perf_counter()
            cand = pruned if method == "none" else recover_structured(m, pruned, dg, plan, data,
                                                                       method=method.split()[0])
            seconds = time.perf_counter() - t
            acc = _top1(cand, test)
            _row(rows, setting=setting, method=f"{importance} + {method}", macs_kept=kept, base=base, top1=acc,
                 drop=(base - acc) * 100, seconds=seconds, extra=f"ratio {ratio:.2f}")
    report = sensitivity(m, calib, ratios=tuple(i / 10 for i in range(1, 10)), recover="lstsq", dg=dg)
    ratios = allocate(m, dg, report, target_macs=target)
    plan = make_plan(m, dg, ratio=0.0, group_ratios=ratios)
    pruned = apply_plan(m, plan, dg=dg)
    kept = model_stats(pruned).macs / base_macs
    for method in ("none", "lstsq"):
        cand = pruned if method == "none" else recover_structured(m, pruned, dg, plan, calib, method="lstsq")
        acc = _top1(cand, test)
        _row(rows, setting=setting, method=f"budget (sensitivity) + {method}", macs_kept=kept, base=base, top1=acc,
             drop=(base - acc) * 100, extra=str({g: r for g, r in ratios.items() if r}))


def mlp_rows(rows: list[dict]) -> None:
    path, calib, test = _paths("digits_mlp")
    m = load_model(path)
    base = _top1(m, test)
    for label, cut in (("MLP unstructured 70%", lambda s: sparsify(m, sparsity=0.7, scores=s).model),
                       ("MLP 2:4", lambda s: sparsify_nm(m, n=2, m=4, scores=s).model)):
        for crit in ("magnitude", "wanda", "activation"):
            scores = None if crit == "magnitude" else sparse_scores(m, calib, criterion=crit)
            sparse = cut(scores)
            for method in ("none", "lstsq"):
                t = time.perf_counter()
                cand = sparse if method == "none" else recover_sparse(m, sparse, calib, method="lstsq")
                seconds = time.perf_counter() - t
                acc = _top1(cand, test)
                _row(rows, setting=label, method=f"{crit} + {method}", base=base, top1=acc, drop=(base - acc) * 100,
                     seconds=seconds, sparsity=1 - model_stats(cand).nonzero_params / model_stats(m).nonzero_params)


def _logits(model: object, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = create_session(model)
    name = sess.get_outputs()[0].name
    return run_session(sess, feeds, outputs=[name])[name].astype(np.float64)


def transformer_rows(rows: list[dict], ratio: float = 0.3) -> None:
    path, calib, test = _paths("digits_transformer")
    m = load_model(path)
    dg = analyze(m)
    base = _top1(m, test)
    feeds = load_npz_feeds(test, m)
    ref = _logits(m, feeds)
    ffn = {g.id: ratio for g in dg.prunable_groups if all("linear1" in c.node for c in g.sources)}
    plan = make_plan(m, dg, ratio=0.0, group_ratios=ffn)
    pruned = apply_plan(m, plan, dg=dg)
    kept = model_stats(pruned).macs / model_stats(m).macs
    for method in ("none", "bias", "lstsq"):
        cand = pruned if method == "none" else recover_structured(m, pruned, dg, plan, calib, method=method)
        got = _logits(cand, feeds)
        cos = np.sum(got * ref, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        acc = _top1(cand, test)
        _row(rows, setting=f"Transformer FFN -{round(ratio * 100)}%", method=f"l2 + {method}", macs_kept=kept,
             base=base, top1=acc, drop=(base - acc) * 100, cosine=float(cos.mean()), cosine_min=float(cos.min()))


def markdown(rows: list[dict]) -> str:
    head = "| setting | channels/weights chosen by + recovery | MACs kept | top-1 (original) | drop (points) | cosine |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        macs = f"{r['macs_kept']:.1%}" if "macs_kept" in r else "100% (sparse)"
        cos = f"{r['cosine']:.4f} (min {r['cosine_min']:.3f})" if "cosine" in r else ""
        lines.append(f"| {r['setting']} | {r['method']} | {macs} | {r['top1']:.2%} ({r['base']:.2%}) | "
                     f"{r['drop']:+.2f} | {cos} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    started = time.perf_counter()
    cnn_rows(rows, 0.7)
    cnn_rows(rows, 0.5)
    mlp_rows(rows)
    transformer_rows(rows)
    print(markdown(rows))
    print(f"\n(total {time.perf_counter() - started:.0f} s; `.venv/bin/python tools/recovery_table.py`)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
