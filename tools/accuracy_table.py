"""Accuracy of the trained digits models before and after pruning, as a Markdown table.

Why this tool exists: the README's accuracy claims must come from a command anyone can rerun, not from
memory. It prunes the committed trained models (``models/digits_*.onnx``) with the Python API at several
ratios and with every criterion, scores each result on the model's held-out test split with
:func:`onnxprune.runtime.evaluate.evaluate_accuracy` (onnxruntime), and prints a table stamped with the date and
the command line. Nothing is retrained or recovered: these are the raw numbers of a one-shot cut.

Run from the repository root::

    .venv/bin/python tools/accuracy_table.py                       # digits_cnn and digits_mlp
    .venv/bin/python tools/accuracy_table.py --models digits_cnn digits_mlp digits_transformer
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune.core.errors import OnnxPruneError  # noqa: E402
from onnxprune.core.io import load_model  # noqa: E402
from onnxprune.core.stats import count_params  # noqa: E402
from onnxprune.runtime.evaluate import evaluate_accuracy  # noqa: E402
from onnxprune.sparse.sparsify import sparsify  # noqa: E402
from onnxprune.structured.prune import prune_structured  # noqa: E402

STRUCTURED_RATIOS = (0.1, 0.2, 0.3, 0.5)
STRUCTURED_CRITERIA = ("l1", "l2", "fpgm", "bn_scale", "random")
SPARSITIES = (0.5, 0.7, 0.9)


def measure(name: str) -> dict[str, str]:
    """Cell text for every (mode, criterion, ratio) row of one model: top-1 and the share of params left."""
    info = json.loads((ROOT / "models" / "manifest.json").read_text())["models"][name]
    model = load_model(ROOT / "models" / info["file"])
    data = ROOT / "models" / info["data"]["test"]["file"]
    params = count_params(model)
    cells = {"baseline": f"{evaluate_accuracy(model, data).top1:.2%}"}
    for criterion in STRUCTURED_CRITERIA:
        for ratio in STRUCTURED_RATIOS:
            key = f"structured|{criterion}|{ratio}"
            try:
                pruned = prune_structured(model, ratio=ratio, importance=criterion, seed=0).model
            except OnnxPruneError as exc:
                cells[key] = f"n/a ({str(exc)[:60]})"
                continue
            acc = evaluate_accuracy(pruned, data).top1
            cells[key] = f"{acc:.2%} ({count_params(pruned) / params:.0%} params)"
    for sparsity in SPARSITIES:
        result = sparsify(model, sparsity=sparsity)
        acc = evaluate_accuracy(result.model, data).top1
        cells[f"unstructured|magnitude|{sparsity}"] = (
            f"{acc:.2%} ({count_params(result.model, nonzero=True) / params:.0%} nonzero)")
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits_cnn", "digits_mlp"], metavar="NAME",
                        help="trained models of models/manifest.json (default: digits_cnn digits_mlp)")
    args = parser.parse_args(argv)
    columns = {name: measure(name) for name in args.models}
    command = " ".join([".venv/bin/python", "tools/accuracy_table.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"Top-1 accuracy on the 360-sample held-out digits test split, measured {_dt.date.today().isoformat()} "
          f"with `{command}` (one-shot pruning, no recovery; params = share of parameters left, "
          f"nonzero = share of parameters left non-zero).")
    print()
    print("| mode | criterion | ratio | " + " | ".join(f"`{n}`" for n in columns) + " |")
    print("|---|---|---:|" + "---:|" * len(columns))
    rows = ["baseline"] + [f"structured|{c}|{r}" for c in STRUCTURED_CRITERIA for r in STRUCTURED_RATIOS] \
        + [f"unstructured|magnitude|{s}" for s in SPARSITIES]
    for row in rows:
        label = "| unpruned | — | 0 |" if row == "baseline" else "| " + " | ".join(row.split("|")) + " |"
        print(label + " " + " | ".join(columns[n][row] for n in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
