"""Prune QDQ-quantized versions of the shipped models in every mode; print one Markdown row per run.

Each model in ``models/`` that has a ``*_calib.npz`` is quantized with onnxruntime's ``quantize_static``
(QDQ, per-channel int8 weights, uint8 activations, calibrated on that npz) into a temporary folder, then
pruned with ``onnxprune prune`` defaults in each mode. The table shows file sizes (a de-quantizing pruner
would grow them), parameters, whether Q/DQ nodes and integer types survived, the exactness check and, where
a ``*_test.npz`` exists, top-1 accuracy. Usage: ``.venv/bin/python tools/qdq_table.py [model ...]``.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

import onnxprune as op
from onnxprune.core.stats import count_params
from onnxprune.runtime.evaluate import evaluate_accuracy

ROOT = Path(__file__).resolve().parents[1]
MODES = {"structured 0.3": op.PruneConfig(mode="structured", ratio=0.3),
         "unstructured 0.5": op.PruneConfig(mode="unstructured", sparsity=0.5),
         "2:4": op.PruneConfig(mode="nm", nm="2:4")}


class _Reader:
    def __init__(self, path: Path, input_name: str) -> None:
        data = np.load(path)
        x = next(data[k] for k in data.files if k != "labels")
        self._batches = [{input_name: x[i:i + 32]} for i in range(0, len(x), 32)]
        self._it = iter(self._batches)

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def _quantize(name: str, folder: Path) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    src = ROOT / "models" / f"{name}.onnx"
    model = onnx.load(src)
    dst = folder / f"{name}_qdq.onnx"
    quantize_static(str(src), str(dst), _Reader(ROOT / "models" / f"{name}_calib.npz", model.graph.input[0].name),
                    quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8)
    return dst


def _top1(path: Path, name: str) -> str:
    test = ROOT / "models" / f"{name}_test.npz"
    if not test.exists():
        return ""
    return f"{evaluate_accuracy(str(path), str(test)).top1:.2%}"


def main(names: list[str]) -> None:
    print("| model | mode | file (bytes) | params | Q/DQ nodes kept | integer types kept | exact (max diff) | top-1 |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            qdq = _quantize(name, Path(tmp))
            original = onnx.load(qdq)
            ops = Counter(n.op_type for n in original.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
            types = {t.name: t.data_type for t in original.graph.initializer}
            print(f"| {name} QDQ | original | {qdq.stat().st_size:,} | {count_params(original):,} | "
                  f"{sum(ops.values())} | | | {_top1(qdq, name)} |")
            for label, config in MODES.items():
                out = Path(tmp) / f"{name}_{label.replace(' ', '_').replace(':', '_')}.onnx"
                result = op.prune(str(qdq), config, output=str(out))
                pruned = onnx.load(out)
                kept_ops = Counter(n.op_type for n in pruned.graph.node
                                   if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
                kept_types = {t.name: t.data_type for t in pruned.graph.initializer} == types
                params = count_params(pruned, nonzero=config.mode != "structured")
                exact = result.report.get("validation", {}).get("exact", {})
                diff = max((o["max_abs"] for c in exact.get("comparisons", {}).values() for o in c["outputs"]),
                           default=None)
                exact_text = "-" if not exact else f"{'yes' if exact.get('passed') else 'NO'} ({diff:.3g})"
                print(f"| {name} QDQ | {label} | {out.stat().st_size:,} | {params:,} | "
                      f"{'yes' if kept_ops == ops else 'NO'} | {'yes' if kept_types else 'NO'} | {exact_text} "
                      f"| {_top1(out, name)} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["digits_cnn", "digits_mlp"])
