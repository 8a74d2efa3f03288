"""Gather of activations with constant indices: the axes it does not index are carried unchanged.

Why: torch exports the packed input projection of ``nn.MultiheadAttention`` as one ``[3E]`` output
reshaped to ``[.., 3, E]`` and cut into Q, K and V with ``Gather(index k)`` on the ``3`` axis; the ``E``
axis (the heads' channels) passes through. The indexed axis itself is never a channel axis here (a cut
there would need the indices rewritten), and a Gather from a constant table with run-time indices (an
embedding) is blocked: its rows are picked at run time. A constant table read at constant indices (Swin's
relative position bias, ``table[index]`` of shape ``[window², heads]``, when the exporter leaves it
unfolded) is a parameter: its other axes are cut with the channels they meet (the heads).
"""

from __future__ import annotations

from onnx import NodeProto

from onnxprune.core.ir import node_label
from onnxprune.structured.axes import ChannelAxis, Coupling
from onnxprune.structured.rules.base import Blocked, OpRule, RuleContext, data_axis, is_output
from onnxprune.structured.rules.registry import register_rule


@register_rule("Gather")
class GatherRule(OpRule):
    """``Y = take(X, indices, axis)``: input axis ``a < axis`` is output ``a``; ``a > axis`` is
    ``a - 1 + rank(indices)``."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        x, idx, y = node.input[0], node.input[1], node.output[0]
        axis = data_axis(node, slot, ctx)
        constant = ctx.is_const(x)
        if ctx.folded(idx) is None:
            if constant:
                raise Blocked(f"{node_label(node)} picks entries of the constant '{x}' at run time")
            raise Blocked(f"{node_label(node)} gathers '{x}' with indices computed at run time")
        rank_x = ctx.rank(x)
        g = ctx.int_attr(node, "axis", 0)
        g = g + rank_x if g < 0 else g
        extra = ctx.rank(idx)
        if is_output(node, slot):
            if g <= axis < g + extra:
                raise Blocked(f"{node_label(node)}: axis {axis} of '{y}' holds the gathered entries")
            a = axis if axis < g else axis - extra + 1
            b = axis
        else:
            if axis == g:
                raise Blocked(f"{node_label(node)} indexes axis {axis} of '{x}'; it cannot be cut")
            a = axis
            b = axis if axis < g else axis - 1 + extra
        if constant:  # a parameter sliced with the channels of the output axis
            return [Coupling(ctx.slot(y, b), ctx.slot(x, a), role="param", input_index=0)]
        return [Coupling(ctx.slot(x, a), ctx.slot(y, b))]
