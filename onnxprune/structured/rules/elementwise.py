"""Elementwise rules: every position of the output is computed from the same position of the inputs.

Unary ops couple input and output axis by axis. Binary and variadic ops follow numpy broadcasting: a
size-1 axis broadcast against a larger one does not carry channels and is not coupled; a constant operand
that is coupled (a per-channel scale, a PRelu slope) is sliced with the group.
"""

from __future__ import annotations

from onnx import NodeProto

from onnxprune.core.ir import node_label
from onnxprune.structured.axes import ChannelAxis, Coupling
from onnxprune.structured.rules.base import (
    Blocked,
    OpRule,
    RuleContext,
    broadcast_couplings,
    is_output,
    out_axis_of,
    which_input,
)
from onnxprune.structured.rules.registry import register_rule

UNARY_OPS = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Sqrt", "Neg", "Abs", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos", "ThresholdedRelu", "Shrink", "Identity", "Cast", "Clip", "IsNaN", "IsInf", "Not",
)
BINARY_OPS = (
    "Add", "Sub", "Mul", "Div", "Pow", "PRelu", "Max", "Min", "Mean", "Sum", "Where", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual",
)


@register_rule(*UNARY_OPS)
class UnaryRule(OpRule):
    """``Y = f(X)`` position by position; extra inputs (Clip bounds) are scalars and never coupled."""

    outputs: tuple[int, ...] = (0,)

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        if not (is_output(node, slot) or 0 in which_input(node, slot, ctx)):
            raise Blocked(f"{node_label(node)} reads '{slot.tensor}' as a parameter, not as data")
        x_slot = ctx.slot(node.input[0], slot.axis)
        return [Coupling(x_slot, ctx.slot(node.output[i], slot.axis)) for i in self.outputs
                if i < len(node.output) and node.output[i]]


@register_rule("Dropout")
class DropoutRule(UnaryRule):
    """Dropout: the output and the optional mask are both elementwise in the input."""

    outputs = (0, 1)


@register_rule(*BINARY_OPS)
class BroadcastRule(OpRule):
    """Binary and variadic ops with numpy broadcasting over all inputs."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        inputs = range(len(node.input))
        if not is_output(node, slot):
            # A size-1 axis broadcast against a larger output carries no channel: nothing to couple.
            for i in which_input(node, slot, ctx):
                out_axis = slot.axis + ctx.rank(node.output[0]) - ctx.rank(node.input[i])
                if ctx.shape(node.input[i])[slot.axis] == 1 and ctx.shape(node.output[0])[out_axis] != 1:
                    return []
        out_axis = out_axis_of(node, slot, inputs, ctx)
        return broadcast_couplings(node, inputs, out_axis, ctx)
