"""Quantization rules: QuantizeLinear and DequantizeLinear (QDQ models).

Both compute each output position from the same input position (``y = saturate(x / s + zp)`` and
``y = (x - zp) * s``), so every axis passes channels through. A per-tensor scale and zero point are scalars
and stay as they are; a per-channel one (a 1-D scale along the ``axis`` attribute) is sliced with its
channels when the cut axis is that axis, and is untouched by a cut on another axis. This serves quantized
weights (an int8 constant behind DequantizeLinear, cut in its integer storage) and the Q/DQ pairs on
activations alike, so a pruned QDQ model keeps every Q/DQ pair and its integer types.

Block quantization (``block_size``, opset 21) and scales or zero points computed at run time are blockers.
"""

from __future__ import annotations

from onnx import NodeProto

from onnxprune.core.ir import node_label
from onnxprune.structured.axes import ChannelAxis, Coupling
from onnxprune.structured.rules.base import Blocked, OpRule, RuleContext, is_output, which_input
from onnxprune.structured.rules.registry import register_rule


@register_rule("QuantizeLinear", "DequantizeLinear")
class QuantLinearRule(OpRule):
    """``Y = quantize(X)`` / ``Y = dequantize(X)`` with input 1 the scale and input 2 the zero point."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        x, y = node.input[0], node.output[0]
        scale = node.input[1] if len(node.input) > 1 else ""
        zp = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        label = node_label(node)
        if int(ctx.attr(node, "block_size", 0) or 0) > 0:  # type: ignore[call-overload]
            raise Blocked(f"{label} uses block quantization (block_size); onnxprune cuts per-tensor and "
                          f"per-channel quantization only")
        for name in (scale, zp):
            if name and not ctx.is_const(name):
                raise Blocked(f"{label}: its scale or zero point '{name}' is computed at run time")
        rank = ctx.rank(x)
        per_channel = bool(scale) and len(ctx.shape(scale)) == 1 and ctx.shape(scale)[0] > 1
        q_axis = ctx.int_attr(node, "axis", 1) % rank if per_channel and rank else None
        ins = which_input(node, slot, ctx)
        if is_output(node, slot) or 0 in ins:
            axis = slot.axis
        elif q_axis is not None and any(i in (1, 2) for i in ins):
            axis = q_axis  # a per-channel scale or zero point stands for the quantized axis
        else:
            raise Blocked(f"{label} reads '{slot.tensor}' as a scale or zero point; its values cannot be cut")
        x_slot, y_slot = ctx.slot(x, axis), ctx.slot(y, axis)
        result = [Coupling(y_slot, x_slot, role="param" if ctx.is_const(x) else "", input_index=0)]
        if axis == q_axis:
            result += [Coupling(y_slot, ctx.slot(name, 0), role="param", input_index=i)
                       for i, name in ((1, scale), (2, zp)) if name]
        return result
