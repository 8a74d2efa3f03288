"""A ResNeSt split-attention block (timm's ``SplitAttn``) built with ``onnx.helper``, as the torch exporters
write it.

``x [N, c_in, H, W]`` → grouped Conv (``radix * cardinality`` groups) to ``RC = radix * c`` channels → Relu →
Reshape to ``(N, radix, c, H, W)`` → sum of the parts → spatial mean → fc1 (grouped Conv 1x1, Relu) → fc2
(grouped Conv 1x1) to ``RC`` logits → rsoftmax (Reshape to ``(N, cardinality, radix, c / cardinality)``,
Transpose, Softmax over the radix axis, Reshape back) → Reshape to ``(N, radix, c, 1, 1)`` → weigh the parts
and sum them → a sink Conv 1x1 to 4 channels.

``runtime_target`` writes every target as the legacy exporter does (``Concat`` of ``Shape`` reads, ``RC //
radix`` as ``Div``); otherwise as the dynamo exporter does (constants with ``-1`` for the batch, and the
rsoftmax merge fused into one Reshape to ``(N, radix, c, 1, 1)``). The faults the analysis must refuse:
``div="runtime"`` divides by a run-time value instead of a constant; ``div="other"`` also splits a second,
independent Conv's ``RC`` channels with ``RC // radix`` read from the block's conv (whose cut it would not
follow), summed and sunk into the output on their own; ``softmax_axis=3`` softmaxes over the per-part
channels.
"""

from __future__ import annotations

import numpy as np
import onnx
from builders import GraphBuilder, vinfo
from onnx import helper


def _i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def _size(g: GraphBuilder, tensor: str, axis: int) -> str:
    """``Unsqueeze(Gather(Shape(tensor), axis))``: one run-time entry of a target."""
    read = g.op("Gather", [g.op("Shape", [tensor]), g.const(np.array(axis, np.int64))], axis=0)
    return g.op("Unsqueeze", [read, g.const(_i64(0))])


def _target(g: GraphBuilder, *pieces: str | int) -> str:
    """A run-time target: ``Concat`` of run-time entries (names) and constants (ints)."""
    return g.op("Concat", [p if isinstance(p, str) else g.const(_i64(p)) for p in pieces], axis=0)


def split_attention(seed: int = 0, *, radix: int = 2, cardinality: int = 1, c: int = 6, c_in: int = 4,
                    attn: int = 8, hw: int = 5, runtime_target: bool = True, div: str = "const",
                    softmax_axis: int = 1) -> onnx.ModelProto:
    """One split-attention block with random weights; see the module docstring for the options."""
    g = GraphBuilder(seed)
    rc, d = radix * c, c // cardinality
    y = g.op("Relu", [g.conv("x", c_in, rc, group=radix * cardinality)])

    def per_part() -> str:
        """``RC // radix`` as the legacy exporter writes it (or one of the faults)."""
        read = g.op("Gather", [g.op("Shape", [y]), g.const(np.array(1, np.int64))], axis=0)
        by = g.op("Gather", [g.op("Shape", ["parts"]), g.const(np.array(0, np.int64))], axis=0) \
            if div == "runtime" else g.const(np.array(radix, np.int64))
        return g.op("Unsqueeze", [g.op("Cast", [g.op("Div", [read, by])], to=onnx.TensorProto.INT64), g.const(_i64(0))])

    if runtime_target:
        xs_shape = _target(g, _size(g, y, 0), radix, per_part(), _size(g, y, 2), _size(g, y, 3))
    else:
        xs_shape = g.const(_i64(-1, radix, c, hw, hw))
    xs = g.op("Reshape", [y, xs_shape])
    gap = g.op("ReduceMean", [g.op("ReduceSum", [xs, g.const(_i64(1))], keepdims=0)], axes=[2, 3], keepdims=1)
    a = g.op("Relu", [g.conv(gap, c, attn, k=1, group=cardinality)])
    logits = g.conv(a, attn, rc, k=1, group=cardinality)
    if runtime_target:
        grouped = g.op("Reshape", [logits, _target(g, _size(g, logits, 0), cardinality, radix, -1)])
    else:
        grouped = g.op("Reshape", [logits, g.const(_i64(-1, cardinality, radix, d))])
    soft = g.op("Softmax", [g.op("Transpose", [grouped], perm=[0, 2, 1, 3])], axis=softmax_axis)
    if runtime_target:
        flat = g.op("Reshape", [soft, _target(g, _size(g, logits, 0), -1)])
        flat = g.op("Reshape", [flat, _target(g, _size(g, logits, 0), -1, 1, 1)])
        weights = g.op("Reshape", [flat, _target(g, _size(g, y, 0), radix, per_part(), 1, 1)])
    else:
        weights = g.op("Reshape", [soft, g.const(_i64(-1, radix, c, 1, 1))])
    out = g.op("ReduceSum", [g.op("Mul", [xs, weights]), g.const(_i64(1))], keepdims=0)
    if div != "other":
        g.nodes.append(helper.make_node("Conv", [out, g.weight((4, c, 1, 1))], ["out"], name="sink"))
    else:
        other = g.conv("x", c_in, rc, k=1)
        parts = g.op("Reshape", [other, _target(g, _size(g, y, 0), radix, per_part(), _size(g, y, 2), _size(g, y, 3))])
        summed = g.op("ReduceSum", [parts, g.const(_i64(1))], keepdims=0)
        both = [g.op("Conv", [t, g.weight((4, c, 1, 1))]) for t in (out, summed)]
        g.nodes.append(helper.make_node("Add", both, ["out"], name="add"))
    inputs = [vinfo("x", ["N", c_in, hw, hw])] + ([vinfo("parts", [radix])] if div == "runtime" else [])
    return g.build(inputs, [vinfo("out", ["N", 4, hw, hw])])
