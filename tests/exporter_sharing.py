"""Test helper: make a model look like an export whose exporter de-duplicated identical constants.

Exporters (the torch exporters, tf2onnx, onnxsim) store identical initializers once: an untrained network's
zero biases and its BatchNormalization defaults (scale 1, bias 0, mean 0, variance 1) become one tensor per
shape, read by every layer of that width. This reproduces that on our sample models.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import numpy_helper


def reset_to_init_values(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose Conv/Gemm biases are zero and whose BatchNormalization parameters are (1, 0, 0, 1)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    values: dict[str, float] = {}
    for node in out.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:
            values[node.input[2]] = 0.0
        if node.op_type == "BatchNormalization":
            for name, v in zip(node.input[1:5], (1.0, 0.0, 0.0, 1.0), strict=True):
                values[name] = v
    for t in out.graph.initializer:
        if t.name in values:
            a = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(np.full_like(a, values[t.name]), t.name))
    return out


def share_identical_initializers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, list[str]]]:
    """A copy in which initializers of equal dtype, shape and bytes are one tensor (the first one's name).

    Returns:
        The model and ``{kept name: [names folded into it]}``.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    for t in out.graph.initializer:
        a = numpy_helper.to_array(t)
        key = (a.dtype.str, a.shape, hashlib.sha256(a.tobytes()).hexdigest())
        if key in first:
            alias[t.name] = first[key]
        else:
            first[key] = t.name
    keep = [t for t in out.graph.initializer if t.name not in alias]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    for node in out.graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    folded: dict[str, list[str]] = {}
    for name, target in alias.items():
        folded.setdefault(target, []).append(name)
    onnx.checker.check_model(out)
    return out, folded
