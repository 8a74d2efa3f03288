"""Pooling and reduction rules: pools keep the batch and channel axes; reductions keep every axis they do
not reduce (a reduced channel axis is a blocker: the sum or mean would change).
"""

from __future__ import annotations

from onnx import NodeProto

from onnxprune.core.ir import node_label
from onnxprune.structured.axes import ChannelAxis, Coupling
from onnxprune.structured.rules.base import Blocked, OpRule, RuleContext, is_output, which_input
from onnxprune.structured.rules.registry import register_rule

POOL_OPS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
REDUCE_OPS = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
#: Opset from which each reduction takes ``axes`` as an input instead of an attribute.
AXES_INPUT_SINCE = {op: (13 if op == "ReduceSum" else 18) for op in REDUCE_OPS}


@register_rule(*POOL_OPS)
class PoolRule(OpRule):
    """Pools act per (batch, channel): axes 0 and 1 are kept, spatial axes are blockers."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        if slot.axis > 1:
            raise Blocked(f"{node_label(node)} pools over spatial axis {slot.axis} of '{slot.tensor}'")
        if len(node.output) > 1 and node.output[1] and ctx.index.consumers.get(node.output[1]):
            raise Blocked(f"{node_label(node)} returns flat indices that encode channel positions")
        return [Coupling(ctx.slot(node.input[0], slot.axis), ctx.slot(node.output[0], slot.axis))]


def reduce_axes(node: NodeProto, ctx: RuleContext, rank: int) -> list[int]:
    """Normalized reduced axes (all axes when none are given, unless ``noop_with_empty_axes``)."""
    if ctx.opset >= AXES_INPUT_SINCE[node.op_type]:
        axes = [int(a) for a in ctx.const(node.input[1]).reshape(-1)] if len(node.input) > 1 and node.input[1] else []
    else:
        axes = ctx.ints_attr(node, "axes")
    if not axes:
        if ctx.opset >= 18 and ctx.int_attr(node, "noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    return sorted(a + rank if a < 0 else a for a in axes)


@register_rule(*REDUCE_OPS)
class ReduceRule(OpRule):
    """Reductions over other axes; ``keepdims=0`` shifts the surviving axes."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        x, y = node.input[0], node.output[0]
        rank = ctx.rank(x)
        axes = reduce_axes(node, ctx, rank)
        keep = ctx.int_attr(node, "keepdims", 1)
        survivors = [a for a in range(rank) if keep or a not in axes]
        if is_output(node, slot):
            axis = survivors[slot.axis]
        elif 0 in which_input(node, slot, ctx):
            axis = slot.axis
        else:
            raise Blocked(f"{node_label(node)} reads '{slot.tensor}' as its axes")
        if axis in axes:
            raise Blocked(f"{node_label(node)} reduces over axis {axis} of '{x}'")
        return [Coupling(ctx.slot(x, axis), ctx.slot(y, survivors.index(axis)))]
