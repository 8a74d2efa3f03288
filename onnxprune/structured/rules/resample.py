"""Pad, Resize and Upsample: they change spatial axes only; touching the cut axis is a blocker, and a
Resize given explicit ``sizes`` gets its channel entry rewritten.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.ir import node_label
from onnxprune.structured.axes import ChannelAxis, Coupling
from onnxprune.structured.rules.base import Blocked, OpRule, RewriteContext, RuleContext, data_axis
from onnxprune.structured.rules.registry import register_rule


@register_rule("Pad")
class PadRule(OpRule):
    """Pad with zero padding on the cut axis is elementwise along it."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        axis = data_axis(node, slot, ctx)
        x, y = node.input[0], node.output[0]
        rank = ctx.rank(x)
        if ctx.opset < 11:
            pads = ctx.ints_attr(node, "pads") or ctx.ints_attr(node, "paddings")
            axes = list(range(rank))
        else:
            pads = [int(p) for p in ctx.const(node.input[1]).reshape(-1)]
            if len(node.input) > 3 and node.input[3]:
                axes = [int(a) + rank if a < 0 else int(a) for a in ctx.const(node.input[3]).reshape(-1)]
            else:
                axes = list(range(rank))
        if axis in axes:
            k = axes.index(axis)
            if pads[k] or pads[k + len(axes)]:
                raise Blocked(f"{node_label(node)} pads axis {axis} of '{x}'")
        return [Coupling(ctx.slot(x, axis), ctx.slot(y, axis))]


@register_rule("Resize", "Upsample")
class ResizeRule(OpRule):
    """Resize/Upsample keep an axis whose scale is 1 (or whose size is unchanged)."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        axis = data_axis(node, slot, ctx)
        x, y = node.input[0], node.output[0]
        if ctx.shape(x)[axis] != ctx.shape(y)[axis]:
            raise Blocked(f"{node_label(node)} resizes axis {axis} of '{x}'")
        if node.op_type == "Resize" and len(node.input) > 3 and node.input[3] and not ctx.is_const(node.input[3]):
            raise Blocked(f"{node_label(node)} computes its output sizes at runtime ('{node.input[3]}'); they "
                          f"hold the channel count, which the cut would leave stale")
        return [Coupling(ctx.slot(x, axis), ctx.slot(y, axis))]

    def rewrite(self, node: NodeProto, ctx: RewriteContext) -> None:
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
            return
        x = node.input[0]
        rank = len(ctx.shape(x))
        sizes = ctx.const(node.input[3]).astype(np.int64).reshape(-1).copy()
        axes_attr = ctx.ints_attr(node, "axes") if ctx.opset >= 18 else []
        axes = [a + rank if a < 0 else a for a in axes_attr] if axes_attr else list(range(rank))
        new = ctx.new_shape(x)
        if all(sizes[k] == new[a] for k, a in enumerate(axes)):
            return
        for k, a in enumerate(axes):
            if ctx.changed(x, a):
                sizes[k] = new[a]
        ctx.set_const_input(node, 3, sizes)
