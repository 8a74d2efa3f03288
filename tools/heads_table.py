"""Measure head criteria and depth on ``models/digits_transformer.onnx``; print Markdown tables.

Why: "data-aware head criteria beat magnitude", "lstsq re-fits the output projection" and "block influence
picks better blocks than the norm" must come from a command anyone can rerun. Accuracy is top-1 on the
held-out test split (``models/digits_transformer_test.npz``); calibration uses only
``models/digits_transformer_calib.npz`` (drawn from the training split).

Width rows: heads and feed-forward neurons, every prunable group at one uniform ratio (0.35: about -30% of
MACs; 0.5: about -50%), ``--round-to 1``. Each row is one ``prune`` run, as on the command line::

    onnxprune prune models/digits_transformer.onnx -o out.onnx --ratio R --round-to 1 --importance C \\
        --calib models/digits_transformer_calib.npz --recover none|lstsq \\
        --eval-data models/digits_transformer_test.npz

``l2`` scores heads by weights only; ``activation`` scores heads by their output norm through the output
projection (feed-forward neurons by mean |x|), ``ablation`` by the output error with the head silenced
(feed-forward neurons by ``activation``); the heads-only rows (``--exclude '*linear1*'``) compare the head
criteria alone. Depth rows: ``--mode depth --remove-blocks N`` without ``--calib``
(norm of the last projection) and with it (block influence), ``--recover none``.

Usage:
  .venv/bin/python tools/heads_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune import PruneConfig, prune  # noqa: E402

MODEL = ROOT / "models" / "digits_transformer.onnx"
CALIB = str(ROOT / "models" / "digits_transformer_calib.npz")
TEST = str(ROOT / "models" / "digits_transformer_test.npz")


def _row(config: PruneConfig) -> tuple[float, float, float, list[str]]:
    report = prune(str(MODEL), config).report
    acc = report["accuracy"]
    removed = [b["add"] for b in (report.get("depth") or {}).get("removed_blocks", [])]
    return (report["macs_after"] / report["macs_before"], acc["before"]["top1"], acc["after"]["top1"], removed)


def main() -> int:
    print("| ratio | MACs kept | criterion | recover | top-1 (original) |")
    print("|---:|---:|---|---|---:|")
    for ratio in (0.35, 0.5):
        for criterion in ("l2", "activation", "ablation"):
            for recover in ("none", "lstsq"):
                config = PruneConfig(ratio=ratio, round_to=1, importance=criterion, calib=CALIB, recover=recover,
                                     eval_data=TEST, bench=False)
                share, before, after, _ = _row(config)
                print(f"| {ratio} | {share:.1%} | {criterion} | {recover} | {after:.2%} ({before:.2%}) |")
    print()
    print("Heads only (feed-forward groups excluded with `--exclude '*linear1*'`):")
    print()
    print("| heads kept per layer | MACs kept | criterion | recover | top-1 (original) |")
    print("|---:|---:|---|---|---:|")
    for ratio, kept in ((0.25, 3), (0.5, 2)):
        for criterion in ("l2", "activation", "ablation"):
            for recover in ("none", "lstsq"):
                config = PruneConfig(ratio=ratio, round_to=1, importance=criterion, calib=CALIB, recover=recover,
                                     eval_data=TEST, bench=False, exclude=("*linear1*",))
                share, before, after, _ = _row(config)
                print(f"| {kept} of 4 | {share:.1%} | {criterion} | {recover} | {after:.2%} ({before:.2%}) |")
    print()
    print("| blocks removed | scored by | blocks | MACs kept | top-1 (original) |")
    print("|---:|---|---|---:|---:|")
    for count in (1, 2):
        for calib, by in ((None, "norm of the last projection"), (CALIB, "block influence (--calib)")):
            config = PruneConfig(mode="depth", remove_blocks=count, calib=calib, recover="none", eval_data=TEST)
            share, before, after, removed = _row(config)
            print(f"| {count} | {by} | {', '.join(removed)} | {share:.1%} | {after:.2%} ({before:.2%}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
