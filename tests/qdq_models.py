"""QDQ-quantized test models: the builders' float models through onnxruntime's ``quantize_static``.

Why here and not in builders.py: quantization needs onnxruntime (builders stay pure onnx) and writes files,
so each helper takes the folder to write in (a test's ``tmp_path``). Calibration data is seeded numpy, so
the quantized model is the same on every run.
"""

from __future__ import annotations

from pathlib import Path

import builders
import numpy as np
import onnx
from onnx import helper


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


#: width, heads, tokens, input channels and classes of :func:`shared_bias_vit`
VIT_D, VIT_HEADS, VIT_T, VIT_C_IN, VIT_CLASSES = 16, 4, 4, 3, 5


def shared_bias_vit(seed: int = 0, *, shared: str = "bias") -> onnx.ModelProto:
    """A ViT block as a Hugging Face export has it before quantization (use with :func:`quantize_qdq`).

    Patch embedding (a 1-D Conv over the tokens) → pre-norm self-attention → LayerNorm → mean → Gemm head.
    ``shared="bias"``: the embedding's bias is also every q/k/v/o bias (through Identity), as exporters
    dedupe identical biases. ``shared="weight"``: in addition, v and o read one weight (a tied weight, one
    int8 tensor once quantized): its readers stay tied, which ties v's heads to the stream o writes.
    """
    d, heads, t = VIT_D, VIT_HEADS, VIT_T
    g = builders.GraphBuilder(seed)
    bias = g.weight((d,), "b")
    stream = g.op("Transpose", [g.op("Conv", ["x", g.weight((d, VIT_C_IN, 1), "w"), bias])], perm=[0, 2, 1])
    tied = g.weight((d, d)) if shared == "weight" else None

    def norm(x: str) -> str:
        return g.op("LayerNormalization", [x, g.weight((d,), "gamma", low=0.5), g.weight((d,), "beta")], axis=-1)

    def proj(x: str, weight: str | None = None) -> str:
        return g.op("Add", [g.op("MatMul", [x, weight or g.weight((d, d))]), g.op("Identity", [bias])])

    def split(y: str, perm: list[int]) -> str:
        target = g.const(np.array([0, t, heads, d // heads], np.int64))
        return g.op("Transpose", [g.op("Reshape", [y, target])], perm=perm)

    ln = norm(stream)
    q, k, v = split(proj(ln), [0, 2, 1, 3]), split(proj(ln), [0, 2, 3, 1]), split(proj(ln, tied), [0, 2, 1, 3])
    s = g.op("Mul", [g.op("MatMul", [q, k]), g.const(np.array(1.0 / np.sqrt(d // heads), np.float32))])
    c = g.op("Transpose", [g.op("MatMul", [g.op("Softmax", [s], axis=-1), v])], perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [c, g.const(np.array([0, t, d], np.int64))])
    pooled = g.op("ReduceMean", [norm(g.op("Add", [stream, proj(merged, tied)]))], axes=[1], keepdims=0)
    g.nodes.append(helper.make_node("Gemm", [pooled, g.weight((VIT_CLASSES, d)), g.weight((VIT_CLASSES,))],
                                    ["logits"], name="head", transB=1))
    return g.build([builders.vinfo("x", ["B", VIT_C_IN, t])], [builders.vinfo("logits", ["B", VIT_CLASSES])])
