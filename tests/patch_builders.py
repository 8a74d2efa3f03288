"""Feature-map patches moved into and out of one axis, built with ``onnx.helper`` as timm's exports write them.

``swin_merge``: a patch embedding (Conv, stride 2) → channels last ``[B, h, h, c]`` → one pre-norm MLP block on
the stream → Swin's patch merging (``Reshape`` to ``[B, h/2, 2, h/2, 2, c]``, ``Transpose`` to
``[B, h/2, h/2, 2, 2, c]``, ``Reshape`` to ``[B, h/2, h/2, 4c]``) → norm → reduction ``MatMul(4c -> 2c)`` → norm
→ mean over tokens → head.

``mobilevit_unfold``: a Conv to ``c`` channels ``[B, c, hw, hw]`` → MobileViT's unfold (``Reshape`` to
``[B*c*n, p, n, p]``, ``Transpose``, ``Reshape`` to ``[B, c, N, P]``, ``Transpose`` to ``[B, P, N, c]``,
``Reshape`` to ``[B*P, N, c]``) → one pre-norm MLP block → norm → the fold back → a sink Conv 1x1.

``norm``: ``"layer"`` (LayerNormalization over the last axis: width mode), ``"affine"`` (a per-channel scale
and shift, so the stream is cut exactly in structured mode) or ``None``. ``runtime_target`` writes the targets
as the legacy exporter does (``Concat`` of ``Shape`` reads: the channel count read back from the stream,
MobileViT's ``B*c*n`` as ``Mul`` of two reads); otherwise constants with ``-1`` for the batch.
"""

from __future__ import annotations

import numpy as np
import onnx
from builders import GraphBuilder, vinfo
from onnx import helper


def _i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def _read(g: GraphBuilder, tensor: str, axis: int) -> str:
    """``Gather(Shape(tensor), axis)``: a scalar run-time size."""
    return g.op("Gather", [g.op("Shape", [tensor]), g.const(np.array(axis, np.int64))], axis=0)


def _entry(g: GraphBuilder, scalar: str) -> str:
    return g.op("Unsqueeze", [scalar, g.const(_i64(0))])


def _target(g: GraphBuilder, *pieces: str | int) -> str:
    """A run-time target: ``Concat`` of run-time entries (names) and constants (ints)."""
    return g.op("Concat", [p if isinstance(p, str) else g.const(_i64(p)) for p in pieces], axis=0)


def _norm(g: GraphBuilder, x: str, n: int, kind: str | None) -> str:
    if kind is None:
        return x
    scale, shift = g.weight((n,), "scale", 0.5), g.weight((n,), "shift")
    if kind == "layer":
        return g.op("LayerNormalization", [x, scale, shift], axis=-1, epsilon=1e-5)
    return g.op("Add", [g.op("Mul", [x, scale]), shift])


def _mlp(g: GraphBuilder, s: str, c: int, norm: str | None) -> str:
    """``s + fc2(relu(fc1(norm(s))))``: a pre-norm block writing the stream."""
    hidden = g.op("Relu", [g.op("MatMul", [_norm(g, s, c, norm), g.weight((c, 2 * c), "fc1")])])
    return g.op("Add", [s, g.op("MatMul", [hidden, g.weight((2 * c, c), "fc2")])])


def swin_merge(seed: int = 0, *, c: int = 4, hw: int = 8, norm: str | None = "affine", runtime_target: bool = False,
               classes: int = 5) -> onnx.ModelProto:
    """See the module docstring; ``hw`` is the image side (``h = hw / 2`` tokens per side, even)."""
    g = GraphBuilder(seed)
    h = hw // 2
    emb = g.conv("x", 3, c, k=2, strides=[2, 2], pads=[0, 0, 0, 0])
    s = _mlp(g, g.op("Transpose", [emb], perm=[0, 2, 3, 1]), c, norm)
    if runtime_target:
        split = _target(g, _entry(g, _read(g, s, 0)), h // 2, 2, h // 2, 2, _entry(g, _read(g, s, 3)))
    else:
        split = g.const(_i64(-1, h // 2, 2, h // 2, 2, c))
    p = g.op("Transpose", [g.op("Reshape", [s, split])], perm=[0, 1, 3, 4, 2, 5])
    if runtime_target:  # timm: x.reshape(B, H, W, -1), the first three read back from the shape
        lead = g.op("Slice", [g.op("Shape", [p]), g.const(_i64(0)), g.const(_i64(3))])
        merge = _target(g, lead, -1)
    else:
        merge = g.const(_i64(-1, h // 2, h // 2, 4 * c))
    m = g.op("Reshape", [p, merge])
    r = g.op("MatMul", [_norm(g, m, 4 * c, norm), g.weight((4 * c, 2 * c), "reduction")])
    pooled = g.op("ReduceMean", [_norm(g, r, 2 * c, norm)], axes=[1, 2], keepdims=0)
    g.nodes.append(helper.make_node("MatMul", [pooled, g.weight((2 * c, classes), "head")], ["out"], name="head"))
    return g.build([vinfo("x", ["B", 3, hw, hw])], [vinfo("out", ["B", classes])])


def mobilevit_unfold(seed: int = 0, *, c: int = 4, hw: int = 4, patch: int = 2, norm: str | None = "affine",
                     runtime_target: bool = False) -> onnx.ModelProto:
    """See the module docstring; ``hw`` is the feature map's side, a multiple of ``patch``."""
    g = GraphBuilder(seed)
    n, pp = hw // patch, patch * patch
    y = g.conv("x", 3, c)
    if runtime_target:
        bcn = _entry(g, g.op("Mul", [g.op("Mul", [_read(g, y, 0), _read(g, y, 1)]), g.const(np.array(n, np.int64))]))
        unfold = [_target(g, bcn, patch, n, patch), _target(g, _entry(g, _read(g, y, 0)), _entry(g, _read(g, y, 1)),
                                                            n * n, pp),
                  _target(g, _entry(g, g.op("Mul", [_read(g, y, 0), g.const(np.array(pp, np.int64))])), n * n, c)]
        fold = [_target(g, _entry(g, _read(g, y, 0)), pp, n * n, c), _target(g, bcn, n, patch, patch),
                _target(g, _entry(g, _read(g, y, 0)), _entry(g, _read(g, y, 1)), hw, hw)]
    else:
        unfold = [g.const(_i64(-1, patch, n, patch)), g.const(_i64(-1, c, n * n, pp)), g.const(_i64(-1, n * n, c))]
        fold = [g.const(_i64(-1, pp, n * n, c)), g.const(_i64(-1, n, patch, patch)), g.const(_i64(-1, c, hw, hw))]
    u = g.op("Transpose", [g.op("Reshape", [y, unfold[0]])], perm=[0, 2, 1, 3])       # [B*c*n, n, p, p]
    u = g.op("Transpose", [g.op("Reshape", [u, unfold[1]])], perm=[0, 3, 2, 1])       # [B, P, N, c]
    s = _norm(g, _mlp(g, g.op("Reshape", [u, unfold[2]]), c, norm), c, norm)           # [B*P, N, c]
    f = g.op("Transpose", [g.op("Reshape", [s, fold[0]])], perm=[0, 3, 2, 1])         # [B, c, N, P]
    f = g.op("Transpose", [g.op("Reshape", [f, fold[1]])], perm=[0, 2, 1, 3])         # [B*c*n, p, n, p]
    f = g.op("Reshape", [f, fold[2]])                                                  # [B, c, hw, hw]
    g.nodes.append(helper.make_node("Conv", [f, g.weight((4, c, 1, 1), "proj")], ["out"], name="proj"))
    return g.build([vinfo("x", ["B", 3, hw, hw])], [vinfo("out", ["B", 4, hw, hw])])
