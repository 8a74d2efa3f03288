"""Repeating ops: Expand and Tile.

Why they matter: grouped-query attention repeats each key/value head for its query heads
(``Unsqueeze -> Expand -> Reshape``, or ``Tile``, as Hugging Face's ``repeat_kv`` exports). An axis that is
neither broadcast nor tiled is carried position by position (identity); the repeated axis itself is a new
axis of size 1 before the repeat and is never a channel. A cut changes the output size of the carried axis,
so Expand's target entry for it (a constant, or a constant piece of a runtime ``Concat`` target, see
:mod:`onnxprune.structured.attention`) is rewritten; Tile's repeats do not depend on the size and stay.

A tiled axis (repeats > 1 on the cut axis) holds every channel several times: output position
``k*n + i`` is input channel ``i``, a table coupling; the repeats stay valid after the cut.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.ir import node_label
from onnxprune.structured.attention import check_target_entry, rewrite_target
from onnxprune.structured.axes import ChannelAxis, Coupling, Identity, Table
from onnxprune.structured.rules.base import Blocked, OpRule, RewriteContext, RuleContext, data_axis, is_output
from onnxprune.structured.rules.registry import register_rule
from onnxprune.structured.shape_reads import follow_target, follows_cut


def _aligned(node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> tuple[int, int]:
    """(input axis, output axis) of the slot under right-aligned broadcasting; input axis < 0 when absent."""
    axis = data_axis(node, slot, ctx)
    shift = ctx.rank(node.output[0]) - ctx.rank(node.input[0])
    return (axis - shift, axis) if is_output(node, slot) else (axis, axis + shift)


@register_rule("Expand")
class ExpandRule(OpRule):
    """``Y = X`` broadcast to a shape: a non-broadcast axis is identity, a broadcast (size-1) axis carries none."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        x, y = node.input[0], node.output[0]
        a, b = _aligned(node, slot, ctx)
        if a < 0 or (ctx.shape(x)[a] == 1 and ctx.shape(y)[b] != 1):
            if is_output(node, slot):
                raise Blocked(f"{node_label(node)} repeats axis {b} of '{y}' from a size-1 axis; its positions "
                              f"are copies, not channels")
            return []
        if ctx.shape(x)[a] != ctx.shape(y)[b]:
            raise Blocked(f"{node_label(node)}: axis {a} of '{x}' does not match axis {b} of '{y}'")
        entry = b - (ctx.rank(y) - ctx.shape(node.input[1])[0])
        if not ctx.is_const(node.input[1]) and entry >= 0:
            try:
                check_target_entry(node, entry, ctx)
            except Blocked:
                if not follow_target(node, b, ctx):  # a shape read of the cut axis (repeat_kv's target)
                    raise
        return [Coupling(ctx.slot(x, a), ctx.slot(y, b), Identity())]

    def rewrite(self, node: NodeProto, ctx: RewriteContext) -> None:
        y = node.output[0]
        old, new = ctx.shape(y), ctx.new_shape(y)
        if old == new:
            return
        if not ctx.index.is_constant(node.input[1]):
            if not follows_cut(node, ctx):  # repeat_kv's target read from the shape follows the cut by itself
                rewrite_target(node, ctx, offset=len(old) - ctx.shape(node.input[1])[0])
            return
        target = ctx.const(node.input[1]).astype(np.int64).reshape(-1).copy()
        shift = len(old) - len(target)
        for b in range(max(shift, 0), len(old)):
            if old[b] != new[b] and target[b - shift] > 1:
                target[b - shift] = new[b]
        ctx.set_const_input(node, 1, target)


@register_rule("Tile")
class TileRule(OpRule):
    """``Y = tile(X, repeats)``: output position ``k*n + i`` of a tiled axis is input position ``i``."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        x, y = node.input[0], node.output[0]
        axis = data_axis(node, slot, ctx)
        repeats = [int(r) for r in ctx.const(node.input[1]).reshape(-1)]
        n = ctx.shape(x)[axis]
        if repeats[axis] == 1:
            return [Coupling(ctx.slot(x, axis), ctx.slot(y, axis), Identity())]
        positions = np.arange(n * repeats[axis], dtype=np.int64)
        return [Coupling(ctx.slot(x, axis), ctx.slot(y, axis), Table(positions, positions % n))]
