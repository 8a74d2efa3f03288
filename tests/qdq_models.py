"""QDQ-quantized test models: the builders' float models through onnxruntime's ``quantize_static``.

Why here and not in builders.py: quantization needs onnxruntime (builders stay pure onnx) and writes files,
so each helper takes the folder to write in (a test's ``tmp_path``). Calibration data is seeded numpy, so
the quantized model is the same on every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx


class _Reader:
    """A calibration data reader over a few seeded batches for every graph input."""

    def __init__(self, model: onnx.ModelProto, batches: int = 8, seed: int = 0) -> None:
        r = np.random.default_rng(seed)
        inits = {t.name for t in model.graph.initializer}
        self._feeds = []
        for _ in range(batches):
            feed = {}
            for vi in model.graph.input:
                if vi.name in inits:
                    continue
                shape = [d.dim_value if d.HasField("dim_value") else 2 for d in vi.type.tensor_type.shape.dim]
                feed[vi.name] = r.standard_normal(shape).astype(np.float32)
            self._feeds.append(feed)
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def quantize_qdq(model: onnx.ModelProto, folder: Path, name: str = "qdq", *, per_channel: bool = True,
                 unsigned: bool = False, quant_format: object = None) -> Path:
    """Write ``model`` and its static QDQ quantization to ``folder``; returns the quantized file.

    ``per_channel`` quantizes weights per output channel; ``unsigned`` uses uint8 weights and activations
    (asymmetric, so zero points are not 0), else int8 weights (symmetric, zero point 0) and uint8
    activations, onnxruntime's defaults. ``quant_format`` overrides ``QuantFormat.QDQ`` (e.g. QOperator).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    folder = Path(folder)
    src = folder / f"{name}_float.onnx"
    dst = folder / f"{name}.onnx"
    onnx.save(model, src)
    reader = _Reader(model)
    assert isinstance(reader, CalibrationDataReader) or hasattr(reader, "get_next")
    quantize_static(str(src), str(dst), reader, quant_format=quant_format or QuantFormat.QDQ,
                    per_channel=per_channel,
                    weight_type=QuantType.QUInt8 if unsigned else QuantType.QInt8,
                    activation_type=QuantType.QUInt8)
    return dst
