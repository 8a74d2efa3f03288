"""Model statistics: parameters, multiply-accumulates (MACs) and the op histogram.

MACs are counted from inferred shapes at batch 1 (other dynamic input axes at the sizes passed in ``dims``;
``onnxprune.runtime.dims`` chooses and reports them) for the ops that dominate compute (Conv, ConvTranspose,
Gemm, MatMul, and the packed Q/K/V projection of onnxruntime's fused ``Attention``); everything else is
treated as free, which is how pruning papers and tools report them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

import numpy as np
from onnx import ModelProto, NodeProto, numpy_helper

from onnxprune.core.ir import FLOAT_TYPES, GraphIndex, Shape, attr, constant_node_value, node_key
from onnxprune.core.quant import quantized_data, zero_point
from onnxprune.core.shapefold import infer_shapes

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Attention")


def _numel(dims: Sequence[int]) -> int:
    return int(np.prod(list(dims), dtype=np.int64)) if len(dims) else 1


def count_params(model: ModelProto, *, nonzero: bool = False) -> int:
    """Number of floating-point parameters (initializers, and Constant-node tensors larger than a scalar).

    Integer tensors (shapes, indices) are not parameters, except the quantized weights and biases of a QDQ
    model (integers read through ``DequantizeLinear``). With ``nonzero=True`` only non-zero entries count
    (for a quantized tensor: entries other than its zero point), which is the honest parameter count of an
    unstructured-sparse model.
    """
    total = 0
    index = GraphIndex(model)
    quant = quantized_data(index)
    for t in model.graph.initializer:
        if t.data_type in FLOAT_TYPES or t.name in quant:
            if nonzero and t.name in quant:
                stored = numpy_helper.to_array(t)
                total += int(np.count_nonzero(stored != zero_point(index, quant[t.name], stored.ndim)))
            elif nonzero:
                total += int(np.count_nonzero(numpy_helper.to_array(t)))
            else:
                total += _numel(t.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = constant_node_value(node)
            if value is not None and value.dtype.kind == "f" and value.size > 1:
                total += int(np.count_nonzero(value)) if nonzero else int(value.size)
    return total


def _known(shape: Shape | None) -> TypeGuard[tuple[int, ...]]:
    """Every dim a real size: a negative one (an export's ``-1``) is unknown, never counted."""
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def node_macs(node: NodeProto, shapes: dict[str, Shape], opset: int) -> int | None:
    """MACs of one node at the inferred shapes, ``None`` when its shapes are unknown."""
    op = node.op_type
    ins = list(node.input)
    out = shapes.get(node.output[0])
    if op in ("Conv", "ConvTranspose"):
        w = shapes.get(ins[1])
        x = shapes.get(ins[0])
        if not (_known(w) and _known(out) and _known(x)):
            return None
        kernel = _numel(w[2:])
        if op == "Conv":
            return _numel(out) * int(w[1]) * kernel
        # ConvTranspose weight is (C_in, C_out/group, k...): every input pixel feeds C_out/group outputs.
        return _numel(x) * int(w[1]) * kernel
    if op == "Gemm":
        a = shapes.get(ins[0])
        if not (_known(a) and _known(out)):
            return None
        k = int(a[0] if attr(node, "transA", opset, 0) else a[1])
        return _numel(out) * k
    if op == "MatMul":
        a = shapes.get(ins[0])
        if not (_known(a) and _known(out)) or not a:
            return None
        return _numel(out) * int(a[-1])
    if op == "Attention" and node.domain == "com.microsoft":
        # onnxruntime's fused attention: its packed Q/K/V projection ``input [.., hidden] @ weights [hidden, q+k+v]``
        x, w = shapes.get(ins[0]), shapes.get(ins[1])
        if not (_known(x) and _known(w)) or len(w) != 2:
            return None
        return _numel(x) * int(w[1])
    return 0


@dataclass
class ModelStats:
    """Size and compute of a model, as reported by ``analyze`` and in every prune report."""

    params: int
    nonzero_params: int
    macs: int
    macs_by_node: dict[str, int] = field(default_factory=dict)
    unknown_macs: list[str] = field(default_factory=list)
    op_histogram: dict[str, int] = field(default_factory=dict)


def model_stats(model: ModelProto, *, dims: dict[str, int] | None = None,
                shapes: dict[str, Shape] | None = None) -> ModelStats:
    """Parameters, MACs at batch 1 (dynamic dims from ``dims``, else 1) and the op histogram."""
    idx = GraphIndex(model)
    shapes = shapes if shapes is not None else infer_shapes(model, dims)
    by_node: dict[str, int] = {}
    unknown: list[str] = []
    for i, node in enumerate(model.graph.node):
        if node.op_type not in WEIGHTED_OPS:
            continue
        name = node_key(node, i)
        macs = node_macs(node, shapes, idx.opset)
        if macs is None:
            unknown.append(name)
        else:
            by_node[name] = macs
    hist = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                   for n in model.graph.node)
    return ModelStats(
        params=count_params(model),
        nonzero_params=count_params(model, nonzero=True),
        macs=sum(by_node.values()),
        macs_by_node=by_node,
        unknown_macs=unknown,
        op_histogram=dict(sorted(hist.items())),
    )
