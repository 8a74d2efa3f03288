"""Rules for layers with weights: Conv, ConvTranspose, Gemm, MatMul.

These are where groups start (a weight's output axis is a *source*) and end (a weight's input axis is a
*sink*, which absorbs the cut). Grouped and depthwise convolutions are neither: they tie each input group
to its output group, so a group is pruned whole and the ``group`` attribute is rewritten.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.ir import node_label
from onnxprune.structured.axes import ChannelAxis, Coupling, Identity, Table
from onnxprune.structured.rules.base import Blocked, OpRule, RewriteContext, RuleContext, is_output, which_input
from onnxprune.structured.rules.registry import register_rule


def _tie(a: ChannelAxis, b: ChannelAxis, src: np.ndarray, dst: np.ndarray) -> Coupling:
    """Position ``src[k]`` of ``a`` is the same channel as position ``dst[k]`` of ``b``."""
    return Coupling(a, b, Table(np.asarray(dst, dtype=np.int64), np.asarray(src, dtype=np.int64)))


@register_rule("Conv", "ConvTranspose")
class ConvRule(OpRule):
    """Conv: weight ``[M, C/g, k...]``; ConvTranspose: weight ``[C, M/g, k...]``; optional bias ``[M]``."""

    def seeds(self, node: NodeProto, ctx: RuleContext) -> list[ChannelAxis]:
        if ctx.is_const(node.input[1]) and ctx.attr(node, "group", 1) == 1:
            return [ctx.slot(node.output[0], 1)]
        return []

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        x, w, y = node.input[0], node.input[1], node.output[0]
        b = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        if not ctx.is_const(w):
            reason = ctx.quant_reason(w)
            raise Blocked(f"{node_label(node)}: quantized weight '{w}' cannot be cut in place ({reason})" if reason
                          else f"{node_label(node)} has weights computed at runtime ('{w}')")
        transposed = node.op_type == "ConvTranspose"
        w_in, w_out = (0, 1) if transposed else (1, 0)
        group = ctx.int_attr(node, "group", 1)
        ins = which_input(node, slot, ctx)
        if is_output(node, slot):
            side = "batch" if slot.axis == 0 else "out" if slot.axis == 1 else "spatial"
        elif 0 in ins:
            side = "batch" if slot.axis == 0 else "in" if slot.axis == 1 else "spatial"
        elif 1 in ins:
            side = "in" if slot.axis == w_in else "out" if slot.axis == w_out else "spatial"
        elif 2 in ins:
            side = "out"
        else:
            raise Blocked(f"{node_label(node)} does not read '{slot.tensor}' as data")
        if side == "spatial":
            raise Blocked(f"{node_label(node)} cannot drop positions of spatial axis {slot.axis} of '{slot.tensor}'")
        if side == "batch":
            return [Coupling(ctx.slot(x, 0), ctx.slot(y, 0))]
        out_slot, in_slot = ctx.slot(y, 1), ctx.slot(x, 1)
        out_params = [Coupling(out_slot, ctx.slot(b, 0), role="param", input_index=2)] if b else []
        if group == 1:
            if side == "in":
                return [Coupling(in_slot, ctx.slot(w, w_in), role="sink", input_index=1)]
            return [Coupling(out_slot, ctx.slot(w, w_out), role="source", input_index=1), *out_params]
        if slot == ctx.slot(w, 1):
            raise Blocked(f"{node_label(node)} (group={group}) holds per-group input channels on axis 1 of "
                          f"'{w}'; they cannot be cut")
        c_in = ctx.shape(x)[1]
        m = ctx.shape(y)[1]
        cin_g, cout_g = c_in // group, m // group
        j, o = np.arange(c_in), np.arange(m)
        ties = [
            _tie(in_slot, in_slot, j, (j // cin_g) * cin_g),
            _tie(in_slot, out_slot, j, (j // cin_g) * cout_g),
            _tie(out_slot, out_slot, o, (o // cout_g) * cout_g),
        ]
        w_slot = ctx.slot(w, 0)
        w_map = Identity()
        if transposed:  # weight axis 0 follows the input channels
            return [*ties, Coupling(in_slot, w_slot, w_map, role="param", input_index=1), *out_params]
        return [*ties, Coupling(out_slot, w_slot, w_map, role="source", input_index=1), *out_params]

    def rewrite(self, node: NodeProto, ctx: RewriteContext) -> None:
        group = ctx.int_attr(node, "group", 1)
        y = node.output[0]
        if group > 1 and ctx.changed(y, 1):
            cout_g = ctx.shape(y)[1] // group
            ctx.set_attr(node, "group", len(ctx.kept(y, 1)) // cout_g)


def _contract(node: NodeProto, a: str, a_axis: int, b: str, b_axis: int, ctx: RuleContext) -> list[Coupling]:
    """The contraction axis: one operand must be a constant (it is the sink)."""
    a_const, b_const = ctx.is_const(a), ctx.is_const(b)
    if a_const == b_const:
        what = "two activations" if not a_const else "two constants"
        raise Blocked(f"{node_label(node)} contracts {what} over the cut axis; only a constant weight can "
                      f"absorb a cut" + (f" ({ctx.quant_reason(b)})" if ctx.quant_reason(b) else ""))
    if b_const:
        return [Coupling(ctx.slot(a, a_axis), ctx.slot(b, b_axis), role="sink", input_index=1)]
    return [Coupling(ctx.slot(b, b_axis), ctx.slot(a, a_axis), role="sink", input_index=0)]


def _free(node: NodeProto, y_slot: ChannelAxis, operand: str, axis: int, index: int,
          ctx: RuleContext) -> Coupling:
    role = "source" if ctx.is_const(operand) else ""
    return Coupling(y_slot, ctx.slot(operand, axis), role=role, input_index=index)


@register_rule("Gemm")
class GemmRule(OpRule):
    """``Y = alpha * A' B' + beta * C`` with ``A' = A^T`` if ``transA`` and ``B' = B^T`` if ``transB``."""

    def seeds(self, node: NodeProto, ctx: RuleContext) -> list[ChannelAxis]:
        return [ctx.slot(node.output[0], 1)] if ctx.is_const(node.input[1]) else []

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        a, b, y = node.input[0], node.input[1], node.output[0]
        c = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        ta, tb = ctx.int_attr(node, "transA", 0), ctx.int_attr(node, "transB", 0)
        a_m, a_k = (1, 0) if ta else (0, 1)
        b_k, b_n = (1, 0) if tb else (0, 1)
        ins = which_input(node, slot, ctx)
        if is_output(node, slot):
            y_axis = slot.axis
        elif 0 in ins:
            y_axis = -1 if slot.axis == a_k else 0
        elif 1 in ins:
            y_axis = -1 if slot.axis == b_k else 1
        elif 2 in ins:
            y_axis = slot.axis + 2 - ctx.rank(c)
        else:
            raise Blocked(f"{node_label(node)} does not read '{slot.tensor}'")
        if y_axis == -1:
            return _contract(node, a, a_k, b, b_k, ctx)
        y_slot = ctx.slot(y, y_axis)
        result = [_free(node, y_slot, a, a_m, 0, ctx) if y_axis == 0 else _free(node, y_slot, b, b_n, 1, ctx)]
        if c:
            cs = ctx.shape(c)
            c_axis = y_axis - (2 - len(cs))
            if c_axis >= 0 and cs[c_axis] == ctx.shape(y)[y_axis] and not (cs[c_axis] == 1):
                result.append(Coupling(y_slot, ctx.slot(c, c_axis), role="param" if ctx.is_const(c) else "",
                                       input_index=2))
        return result


@register_rule("MatMul")
class MatMulRule(OpRule):
    """``Y[..., M, N] = A[..., M, K] @ B[..., K, N]``; batch axes broadcast; rank-1 operands are blocked."""

    def seeds(self, node: NodeProto, ctx: RuleContext) -> list[ChannelAxis]:
        # An unknown output rank raises Blocked: the analysis records the layer as not analysed.
        if ctx.is_const(node.input[1]) and not ctx.is_const(node.input[0]):
            if ctx.rank(node.input[1]) >= 2 and ctx.rank(node.output[0]) >= 2:
                return [ctx.slot(node.output[0], -1)]
        return []

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        a, b, y = node.input[0], node.input[1], node.output[0]
        ra, rb, ry = ctx.rank(a), ctx.rank(b), ctx.rank(y)
        if ra < 2 or rb < 2:
            raise Blocked(f"{node_label(node)} has a rank-1 operand; only rank >= 2 MatMul is handled")
        ins = which_input(node, slot, ctx)
        if is_output(node, slot):
            y_axis = slot.axis
        elif 0 in ins:
            y_axis = -1 if slot.axis == ra - 1 else slot.axis + ry - ra
        elif 1 in ins:
            y_axis = -1 if slot.axis == rb - 2 else ry - 1 if slot.axis == rb - 1 else slot.axis + ry - rb
        else:
            raise Blocked(f"{node_label(node)} does not read '{slot.tensor}'")
        if y_axis == -1:
            return _contract(node, a, ra - 1, b, rb - 2, ctx)
        y_slot = ctx.slot(y, y_axis)
        if y_axis == ry - 2:
            return [_free(node, y_slot, a, ra - 2, 0, ctx)]
        if y_axis == ry - 1:
            return [_free(node, y_slot, b, rb - 1, 1, ctx)]
        # A batch axis: numpy broadcasting over the leading axes.
        ys = ctx.shape(y)
        result: list[Coupling] = []
        for name, rank, idx in ((a, ra, 0), (b, rb, 1)):
            axis = y_axis - (ry - rank)
            if axis >= 0 and not (ctx.shape(name)[axis] == 1 and ys[y_axis] != 1):
                result.append(Coupling(y_slot, ctx.slot(name, axis), role="param" if ctx.is_const(name) else "",
                                       input_index=idx))
        return result

