"""Fused attention ops of onnxruntime (``com.microsoft``): ``Attention``, ``MultiHeadAttention``,
``GroupQueryAttention``, as its transformer optimizer writes them.

Why these can be cut exactly: each op computes ``num_heads`` independent attentions over blocks of
``head_dim`` channels of Q, K and V and concatenates the heads' outputs; heads never mix until the output
projection after the op. So a head is one root channel: its ``head_dim`` channels on Q, K and V (wherever
they are: columns ``[0:q)``, ``[q:q+k)``, ``[q+k:q+k+v)`` of ``Attention``'s packed weight and bias, or the
separate Q/K/V inputs of ``MultiHeadAttention``) and on the output are tied into one class, the output's
channels carry the cut to the output projection's input rows (the sink), and the surgery rewrites
``num_heads`` (and ``qkv_hidden_sizes``). ``head_dim`` is never cut; nor is the attention scale, which
onnxruntime derives from ``head_dim``.

``GroupQueryAttention`` shares each key/value head among ``num_heads / kv_num_heads`` query heads, so a root
channel is a whole KV group (the KV head and all its query heads): ``num_heads`` and ``kv_num_heads`` stay
divisible and are both rewritten.

What blocks, with its reason: an additive ``attention_bias`` (it has a head axis onnxprune does not slice),
``MultiHeadAttention``'s packed or 4-D key/value layouts, ``Attention``'s ``past`` input and ``present``
output (the KV cache is the model's interface), and anything read as a mask or length.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.ir import node_label
from onnxprune.structured.axes import ChannelAxis, Coupling, Table
from onnxprune.structured.rules.base import Blocked, OpRule, RewriteContext, RuleContext, is_output, which_input
from onnxprune.structured.rules.registry import register_rule

MS = "com.microsoft"


def _table(a: ChannelAxis, b: ChannelAxis, roots: np.ndarray, *, role: str = "", input_index: int = -1) -> Coupling:
    """Position ``k`` of ``b`` is the channel of position ``roots[k]`` of ``a`` (every position of ``b``)."""
    roots = np.asarray(roots, dtype=np.int64)
    return Coupling(a, b, Table(np.arange(len(roots), dtype=np.int64), roots), role=role, input_index=input_index)


def _heads(width: int, head: int, per_root: int) -> np.ndarray:
    """Which root each of ``width`` channels belongs to, in heads of ``head`` channels, ``per_root`` heads
    to a root (1, or a GQA group's query heads); callers scale it to the root's first output channel."""
    return (np.arange(width, dtype=np.int64) // head) // per_root


def _input(node: NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _output(node: NodeProto, i: int) -> str:
    return node.output[i] if len(node.output) > i else ""


def _refuse_extras(node: NodeProto, inputs: dict[int, str], outputs: dict[int, str]) -> None:
    """Blocked when the node uses an input or output whose head axis onnxprune does not slice."""
    for i, what in inputs.items():
        if _input(node, i):
            raise Blocked(f"{node_label(node)} reads {what} '{_input(node, i)}', which has a head axis onnxprune "
                          f"does not slice")
    for i, what in outputs.items():
        if _output(node, i):
            raise Blocked(f"{node_label(node)} writes {what} '{_output(node, i)}', which has a head axis onnxprune "
                          f"does not slice")


def _side(node: NodeProto, slot: ChannelAxis, ctx: RuleContext, data: tuple[int, ...]) -> str:
    """``"out"`` for the output's channel axis (or a head input's), ``"in"`` for input 0's channel axis of a
    packed-weight op; raises :class:`Blocked` for batch/sequence axes and for masks and lengths."""
    ins = which_input(node, slot, ctx)
    if is_output(node, slot):
        if slot.tensor != node.output[0]:
            return "cache"
        if slot.axis == 2:
            return "out"
    elif any(i in data for i in ins):
        if slot.axis == ctx.rank(slot.tensor) - 1 and ctx.rank(slot.tensor) == 3:
            return "data"
    else:
        return "param"
    raise Blocked(f"{node_label(node)}: axis {slot.axis} of '{slot.tensor}' is a batch or sequence axis of the "
                  f"attention; only heads are cut")


@register_rule("Attention", domain=MS)
class AttentionRule(OpRule):
    """``Attention(input [B, S, hidden], weights [hidden, q+k+v], bias [q+k+v], mask_index, ...)``.

    Heads are blocks of ``q/num_heads`` (Q), ``k/num_heads`` (K) and ``v/num_heads`` (V) weight columns and
    bias entries; the output ``[B, S, v]`` carries them to the output projection. The input's hidden axis
    is a sink (the packed weight's rows), like a MatMul's reduction axis: in a transformer it is the
    residual stream, which the normalizations around it block with their own reason.
    """

    def seeds(self, node: NodeProto, ctx: RuleContext) -> list[ChannelAxis]:
        return [ctx.slot(node.output[0], 2)] if ctx.is_const(node.input[1]) else []

    def _sizes(self, node: NodeProto, ctx: RuleContext | RewriteContext) -> tuple[int, int, int, int]:
        heads = ctx.int_attr(node, "num_heads")
        sizes = ctx.ints_attr(node, "qkv_hidden_sizes")
        width = ctx.shape(node.input[1])[1]
        q, k, v = sizes if sizes else (width // 3,) * 3
        if heads <= 0 or q + k + v != width or q % heads or k % heads or v % heads:
            raise Blocked(f"{node_label(node)}: packed width {width} does not split into {heads} heads of "
                          f"q/k/v sizes {(q, k, v)}")
        return heads, q, k, v

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        x, w, y = node.input[0], node.input[1], node.output[0]
        if not ctx.is_const(w) or (_input(node, 2) and not ctx.is_const(node.input[2])):
            raise Blocked(f"{node_label(node)} has weights or bias computed at runtime")
        ins = which_input(node, slot, ctx)
        if 0 in ins:
            if slot.axis != 2:
                raise Blocked(f"{node_label(node)}: axis {slot.axis} of '{x}' is a batch or sequence axis; only the "
                              f"hidden axis (a sink) and heads are cut")
            return [Coupling(ctx.slot(x, 2), ctx.slot(w, 0), role="sink", input_index=1)]
        if 1 in ins and slot.axis == 0:
            return [Coupling(ctx.slot(x, 2), ctx.slot(w, 0), role="sink", input_index=1)]
        heads_side = (is_output(node, slot) and slot.tensor == y and slot.axis == 2) or (1 in ins and slot.axis == 1) \
            or (2 in ins and slot.axis == 0)
        if not heads_side:
            raise Blocked(f"{node_label(node)} reads '{slot.tensor}' (axis {slot.axis}) as a mask or length, or it is "
                          f"a batch/sequence axis; only heads are cut")
        _refuse_extras(node, {4: "the KV cache 'past'", 5: "an attention bias"}, {1: "the KV cache 'present'"})
        heads, q, k, v = self._sizes(node, ctx)
        dq, dk, dv = q // heads, k // heads, v // heads
        out = ctx.slot(y, 2)
        first = np.concatenate([_heads(q, dq, 1), _heads(k, dk, 1), _heads(v, dv, 1)]) * dv
        roots = np.concatenate([first[:q + k], np.arange(v, dtype=np.int64)])
        result = [_table(out, out, _heads(v, dv, 1) * dv),
                  _table(out, ctx.slot(w, 1), roots, role="source", input_index=1)]
        if _input(node, 2):
            result.append(_table(out, ctx.slot(node.input[2], 0), roots, role="param", input_index=2))
        return result

    def rewrite(self, node: NodeProto, ctx: RewriteContext) -> None:
        y = node.output[0]
        if not ctx.changed(y, 2):
            return
        heads, q, k, v = self._sizes(node, ctx)
        kept = len(ctx.kept(y, 2)) // (v // heads)
        ctx.set_attr(node, "num_heads", kept)
        if ctx.ints_attr(node, "qkv_hidden_sizes"):
            ctx.set_attr(node, "qkv_hidden_sizes", [q // heads * kept, k // heads * kept, v // heads * kept])


@register_rule("MultiHeadAttention", domain=MS)
class MultiHeadAttentionRule(OpRule):
    """``MultiHeadAttention(query [B, S, q], key [B, L, k], value [B, L, v], bias [q+k+v], ...)``.

    Heads are blocks of ``q/num_heads``, ``k/num_heads`` and ``v/num_heads`` channels of the three inputs
    (and of the packed bias), tied to the output's blocks of ``v/num_heads``. The cut flows back through
    the inputs to the Q/K/V projections that produce them.
    """

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        side = _side(node, slot, ctx, (0, 1, 2))
        if side == "param" and 3 not in which_input(node, slot, ctx):
            raise Blocked(f"{node_label(node)} reads '{slot.tensor}' as a mask or length; only heads are cut")
        _refuse_extras(node, {5: "an attention bias", 6: "the KV cache 'past_key'", 7: "the KV cache 'past_value'"},
                       {1: "the KV cache 'present_key'", 2: "the KV cache 'present_value'", 3: "the scores 'qk'"})
        q_in, k_in, v_in, y = node.input[0], _input(node, 1), _input(node, 2), node.output[0]
        if not k_in or not v_in or ctx.rank(q_in) != 3 or ctx.rank(k_in) != 3 or ctx.rank(v_in) != 3:
            raise Blocked(f"{node_label(node)} uses a packed or 4-D query/key/value layout; only separate 3-D Q, K "
                          f"and V are cut")
        heads = ctx.int_attr(node, "num_heads")
        q, k, v = ctx.dim(q_in, 2), ctx.dim(k_in, 2), ctx.dim(v_in, 2)
        if heads <= 0 or q % heads or k % heads or v % heads:
            raise Blocked(f"{node_label(node)}: widths {(q, k, v)} do not split into {heads} heads")
        dq, dk, dv = q // heads, k // heads, v // heads
        out = ctx.slot(y, 2)
        result = [_table(out, out, _heads(v, dv, 1) * dv),
                  _table(out, ctx.slot(q_in, 2), _heads(q, dq, 1) * dv),
                  _table(out, ctx.slot(k_in, 2), _heads(k, dk, 1) * dv),
                  _table(out, ctx.slot(v_in, 2), np.arange(v, dtype=np.int64))]
        bias = _input(node, 3)
        if bias:
            roots = np.concatenate([_heads(q, dq, 1) * dv, _heads(k, dk, 1) * dv, np.arange(v, dtype=np.int64)])
            result.append(_table(out, ctx.slot(bias, 0), roots, role="param" if ctx.is_const(bias) else "",
                                 input_index=3))
        return result

    def rewrite(self, node: NodeProto, ctx: RewriteContext) -> None:
        y = node.output[0]
        if ctx.changed(y, 2):
            dv = ctx.shape(y)[2] // ctx.int_attr(node, "num_heads")
            ctx.set_attr(node, "num_heads", len(ctx.kept(y, 2)) // dv)


@register_rule("GroupQueryAttention", domain=MS)
class GroupQueryAttentionRule(OpRule):
    """``GroupQueryAttention(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, ...)``.

    A root channel is one KV group: KV head ``g`` (``head_size`` channels of key and value, and of the KV
    cache's head axis) with query heads ``g*r .. (g+1)*r - 1``, ``r = num_heads / kv_num_heads`` (query and
    output share a layout). Without ``key`` the query is packed ``[Q | K | V]``. Removing whole groups keeps
    ``r``, so both head counts stay divisible; ``num_heads`` and ``kv_num_heads`` are rewritten.
    """

    def _layout(self, node: NodeProto, ctx: RuleContext | RewriteContext) -> tuple[int, int, int]:
        n, kv = ctx.int_attr(node, "num_heads"), ctx.int_attr(node, "kv_num_heads")
        width = ctx.shape(node.input[0])[2] if isinstance(ctx, RewriteContext) else ctx.dim(node.input[0], 2)
        packed = not _input(node, 1)
        d = width // (n + 2 * kv) if packed else width // n
        if n <= 0 or kv <= 0 or n % kv or d * ((n + 2 * kv) if packed else n) != width:
            raise Blocked(f"{node_label(node)}: width {width} does not split into {n} query and {kv} key/value "
                          f"heads")
        return n, kv, d

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        side = _side(node, slot, ctx, (0, 1, 2))
        ins = which_input(node, slot, ctx)
        if side == "param" and not any(i in (3, 4, 11) for i in ins):
            raise Blocked(f"{node_label(node)} reads '{slot.tensor}' as lengths, rotary caches or positions; "
                          f"only KV groups are cut")
        _refuse_extras(node, {10: "an attention bias"}, {3: "the attention probabilities"})
        n, kv, d = self._layout(node, ctx)
        r = n // kv
        out = ctx.slot(node.output[0], 2)
        group_first = d * r  # output channels per KV group
        q_roots = _heads(n * d, d, r) * group_first
        kv_roots = _heads(kv * d, d, 1) * group_first
        result = [_table(out, out, q_roots)]
        if _input(node, 1):
            result += [_table(out, ctx.slot(node.input[0], 2), q_roots),
                       _table(out, ctx.slot(node.input[1], 2), kv_roots),
                       _table(out, ctx.slot(node.input[2], 2), kv_roots)]
        else:
            result.append(_table(out, ctx.slot(node.input[0], 2), np.concatenate([q_roots, kv_roots, kv_roots])))
        cache_roots = np.arange(kv, dtype=np.int64) * group_first
        for name in (_input(node, 3), _input(node, 4), _output(node, 1), _output(node, 2)):
            if name:  # the KV cache [B, kv_num_heads, T, head_size]: a graph input or output blocks there
                result.append(_table(out, ctx.slot(name, 1), cache_roots))
        sink = _input(node, 11)
        if sink:
            result.append(_table(out, ctx.slot(sink, 0), np.arange(n, dtype=np.int64) * d,
                                 role="param" if ctx.is_const(sink) else "", input_index=11))
        return result

    def rewrite(self, node: NodeProto, ctx: RewriteContext) -> None:
        y = node.output[0]
        if ctx.changed(y, 2):
            n, kv, d = self._layout(node, ctx)
            kept = len(ctx.kept(y, 2)) // d
            ctx.set_attr(node, "num_heads", kept)
            ctx.set_attr(node, "kv_num_heads", kept // (n // kv))
