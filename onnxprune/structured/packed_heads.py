"""A packed QKV projection split into ``(parts, heads, head_dim)`` by one Reshape, as timm writes attention.

Why: timm computes ``qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)`` and takes ``q, k, v`` apart
along the parts axis (``unbind(0)``: a Split, Gathers or Slices once exported). Channel ``c`` of the packed
width is ``part*H*D + head*D + d``: one axis is split into three, which the two-axis readings of
:func:`onnxprune.structured.attention.split_couplings` cannot place. Read from dataflow: the axis whose
readers only select parts (:func:`onnxprune.structured.attention.selects_parts`, through Transpose,
Squeeze and Unsqueeze moves) is the parts axis and never a channel; the other leading axis is the heads, and
input channel ``c`` belongs to head ``(c // inner) % H`` (``inner`` the product of the axes after the head
axis), so each head is the same block of ``D`` channels in every part: q, k and v lose the same heads. The
last axis is the per-head dim and is never cut. Megatron's ``(heads, parts, head_dim)`` order is read the
same way. When neither or both leading axes only select parts, the split is not read (it stays blocked).
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.ir import node_label
from onnxprune.structured.attention import parts_axis
from onnxprune.structured.axes import Coupling, Table
from onnxprune.structured.rules.base import Blocked, RuleContext


def _prod(values: tuple[int, ...]) -> int:
    return int(np.prod(values, dtype=np.int64)) if len(values) else 1


def three_way_split(s_in: tuple[int, ...], s_out: tuple[int, ...], axis: int) -> int | None:
    """The first output axis ``b`` where input axis ``axis`` is split into ``s_out[b:b+3]`` (every axis before
    and after unchanged in total size, the last of the three > 1, at most one of the other two 1), else None."""
    c = s_in[axis]
    prefix, suffix = _prod(s_in[:axis]), _prod(s_in[axis + 1:])
    for b in range(len(s_out) - 2):
        p, h, d = s_out[b:b + 3]
        if d > 1 and max(p, h) > 1 and p * h * d == c and _prod(s_out[:b]) == prefix \
                and _prod(s_out[b + 3:]) == suffix:
            return b
    return None


def packed_split_couplings(node: NodeProto, axis: int, output_side: bool, ctx: RuleContext) -> list[Coupling] | None:
    """Couplings of a Reshape splitting a packed width into ``(parts, heads, head_dim)`` (either order of the
    first two), or None when ``axis`` is no axis of such a split.

    ``axis`` is an axis of the input (``output_side`` False) or of the output.

    Raises:
        Blocked: ``axis`` is the parts axis or the per-head dim (neither is a channel), or the parts of the
            split are not selected on exactly one of its two leading axes.
    """
    x, y = node.input[0], node.output[0]
    s_in, s_out = ctx.shape(x), ctx.shape(y)
    for a in range(len(s_in)) if output_side else [axis]:
        b = three_way_split(s_in, s_out, a)
        if b is None or (output_side and axis not in range(b, b + 3)):
            continue
        parts = [j for j in (b, b + 1) if s_out[j] > 1 and parts_axis(y, j, ctx)]
        if len(parts) != 1:
            raise Blocked(f"{node_label(node)} splits axis {a} of '{x}' {s_in} into {s_out[b:b + 3]}; onnxprune "
                          f"reads that as (parts, heads, head_dim) only when exactly one of the two leading axes "
                          f"is only selected (Gather, Split or Slice), here {len(parts)} are")
        head = b + 1 if parts[0] == b else b
        if output_side and axis != head:
            what = "selects the parts of a packed projection" if axis == parts[0] else "is the per-head dim"
            raise Blocked(f"{node_label(node)}: axis {axis} of '{y}' {s_out} {what}; it cannot be cut (heads are "
                          f"cut whole, in every part)")
        positions = np.arange(s_in[a], dtype=np.int64)
        roots = (positions // _prod(s_out[head + 1:b + 3])) % s_out[head]
        return [Coupling(ctx.slot(y, head), ctx.slot(x, a), Table(positions, roots))]
    return None
