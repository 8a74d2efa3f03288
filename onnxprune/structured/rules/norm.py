"""Normalization rules: BatchNormalization, InstanceNormalization, GroupNormalization, LayerNormalization,
LRN and the softmax family.

Per-channel normalizations slice their parameters with the group. Normalizations that mix channels are
exact only when whole normalization units go: GroupNormalization ties the channels of each group together
(so groups are dropped whole and ``num_groups`` is rewritten); LayerNormalization, LRN and Softmax over the
cut axis are blockers.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.ir import node_label
from onnxprune.structured.axes import ChannelAxis, Coupling, Table
from onnxprune.structured.rules.base import Blocked, OpRule, RewriteContext, RuleContext, is_output, which_input
from onnxprune.structured.rules.registry import register_rule


def _data_axis(node: NodeProto, slot: ChannelAxis, ctx: RuleContext, params: tuple[int, ...] = ()) -> int:
    """The axis of the data tensor that ``slot`` stands for (parameters map to the channel axis 1)."""
    if is_output(node, slot):
        if slot.tensor != node.output[0]:
            return 1  # running mean/var outputs of training-mode BatchNormalization are per channel
        return slot.axis
    ins = which_input(node, slot, ctx)
    if 0 in ins:
        return slot.axis
    if any(i in params for i in ins):
        return 1
    raise Blocked(f"{node_label(node)} reads '{slot.tensor}' as an unsupported input")


@register_rule("BatchNormalization", "InstanceNormalization")
class ChannelNormRule(OpRule):
    """Per-channel normalization: ``Y[:, c] = scale[c] * norm(X[:, c]) + bias[c]``."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        params = tuple(range(1, len(node.input)))
        axis = _data_axis(node, slot, ctx, params)
        x, y = node.input[0], node.output[0]
        result = [Coupling(ctx.slot(x, axis), ctx.slot(y, axis))]
        if axis != 1:
            if node.op_type == "InstanceNormalization" and axis >= 2:
                raise Blocked(f"{node_label(node)} normalizes over spatial axis {axis}")
            return result
        x1 = ctx.slot(x, 1)
        for i in params:
            if node.input[i]:
                result.append(Coupling(x1, ctx.slot(node.input[i], 0), role="param", input_index=i))
        for extra in node.output[1:]:
            if extra:
                result.append(Coupling(x1, ctx.slot(extra, 0)))
        return result


@register_rule("GroupNormalization", since=18)
class GroupNormRule(OpRule):
    """GroupNormalization: channels of a group are tied, so whole groups are dropped.

    Opset 18 has per-group ``scale``/``bias`` (``[num_groups]``); opset 21 has per-channel ones (``[C]``).
    """

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        axis = _data_axis(node, slot, ctx, (1, 2))
        x, y = node.input[0], node.output[0]
        if axis == 0:
            return [Coupling(ctx.slot(x, 0), ctx.slot(y, 0))]
        if axis != 1:
            raise Blocked(f"{node_label(node)} normalizes over spatial axis {axis}")
        groups = ctx.int_attr(node, "num_groups")
        c = ctx.shape(x)[1]
        if groups <= 0 or c % groups:
            raise Blocked(f"{node_label(node)}: {c} channels do not split into {groups} groups")
        size = c // groups
        j = np.arange(c, dtype=np.int64)
        x1 = ctx.slot(x, 1)
        result = [
            Coupling(x1, x1, Table((j // size) * size, j)),
            Coupling(x1, ctx.slot(y, 1)),
        ]
        per_group = ctx.opset < 21
        for i in (1, 2):
            if len(node.input) > i and node.input[i]:
                p = ctx.slot(node.input[i], 0)
                mapping = Table(j // size, j) if per_group else Table(j, j)
                result.append(Coupling(x1, p, mapping, role="param", input_index=i))
        return result

    def rewrite(self, node: NodeProto, ctx: RewriteContext) -> None:
        x = node.input[0]
        if ctx.changed(x, 1):
            groups = ctx.int_attr(node, "num_groups")
            size = ctx.shape(x)[1] // groups
            ctx.set_attr(node, "num_groups", len(ctx.kept(x, 1)) // size)


def _axis_rule(node: NodeProto, slot: ChannelAxis, ctx: RuleContext, reduced: set[int], why: str) -> list[Coupling]:
    axis = _data_axis(node, slot, ctx)
    if axis in reduced:
        raise Blocked(f"{node_label(node)} {why} axis {axis} of '{node.input[0]}'")
    result = [Coupling(ctx.slot(node.input[0], axis), ctx.slot(node.output[0], axis))]
    for extra in node.output[1:]:  # LayerNormalization Mean / InvStdDev keep the leading axes
        if extra:
            result.append(Coupling(ctx.slot(node.input[0], axis), ctx.slot(extra, axis)))
    return result


@register_rule("LayerNormalization", since=17)
class LayerNormRule(OpRule):
    """LayerNormalization normalizes over ``axis..rank-1``: cutting those axes changes the statistics."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        if not is_output(node, slot) and 0 not in which_input(node, slot, ctx):
            raise Blocked(f"{node_label(node)} normalizes over the axis its scale/bias '{slot.tensor}' covers")
        rank = ctx.rank(node.input[0])
        start = ctx.int_attr(node, "axis", -1)
        start = start + rank if start < 0 else start
        return _axis_rule(node, slot, ctx, set(range(start, rank)), "normalizes over")


@register_rule("LRN")
class LRNRule(OpRule):
    """LRN normalizes across neighbouring channels (axis 1)."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        return _axis_rule(node, slot, ctx, {1}, "normalizes across")


@register_rule("Softmax", "LogSoftmax", "Hardmax")
class SoftmaxRule(OpRule):
    """Softmax family: before opset 13 the input is flattened at ``axis`` and normalized over the tail."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        rank = ctx.rank(node.input[0])
        default = -1 if ctx.opset >= 13 else 1
        axis = ctx.int_attr(node, "axis", default)
        axis = axis + rank if axis < 0 else axis
        reduced = {axis} if ctx.opset >= 13 else set(range(axis, rank))
        return _axis_rule(node, slot, ctx, reduced, "normalizes over")
