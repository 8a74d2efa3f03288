"""Shape rules: Concat, Split, Slice, Transpose and the reshaping ops (Reshape, Flatten, Squeeze,
Unsqueeze).

Concat places each input at an offset of the output; Split and Slice take windows of the input. Reshaping
ops are handled from the inferred shapes: an axis is kept (identity) or folded as the *leading* axis of a
merged axis (``C x H x W -> C*H*W``: a :class:`Block` of ``H*W`` features per channel), or, where that finds
nothing, as the leading factor of an axis whose rest is split off another axis (MobileViT's unfold), and Swin's
patch merging reads the channel innermost (:mod:`onnxprune.structured.patches`). An axis split into several
axes (ShuffleNet's channel shuffle ``Reshape -> Transpose -> Reshape``) is a blocker.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.ir import node_label
from onnxprune.structured.attention import check_target_entry, rewrite_target, split_couplings
from onnxprune.structured.axes import Block, ChannelAxis, Coupling, Identity, Offset
from onnxprune.structured.packed_heads import packed_split_couplings
from onnxprune.structured.patches import factor_coupling, patch_merge_couplings
from onnxprune.structured.radix import radix_couplings
from onnxprune.structured.rules.base import (
    Blocked,
    OpRule,
    RewriteContext,
    RuleContext,
    data_axis,
    is_output,
)
from onnxprune.structured.rules.registry import register_rule
from onnxprune.structured.shape_reads import follow_read, follow_target, follows_cut

INT64_MAX = 2**63 - 1


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


@register_rule("Concat")
class ConcatRule(OpRule):
    """Along ``axis`` input ``k`` is the window ``[offset_k, offset_k + n_k)`` of the output."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        axis = data_axis(node, slot, ctx, tuple(range(len(node.input))))
        y = node.output[0]
        cat = _norm_axis(ctx.int_attr(node, "axis"), ctx.rank(y))
        y_slot = ctx.slot(y, axis)
        result = []
        offset = 0
        for name in node.input:
            if not name:
                continue
            if axis == cat:
                n = ctx.shape(name)[cat]
                result.append(Coupling(ctx.slot(name, axis), y_slot, Offset(offset, n)))
                offset += n
            else:
                result.append(Coupling(ctx.slot(name, axis), y_slot, Identity()))
        return result


def _split_sizes(node: NodeProto, ctx: RuleContext, axis: int) -> list[int]:
    n = ctx.shape(node.input[0])[axis]
    outs = len(node.output)
    if ctx.opset < 13:
        sizes = ctx.ints_attr(node, "split")
        if sizes:
            return sizes
    elif len(node.input) > 1 and node.input[1]:
        return [int(s) for s in ctx.const(node.input[1]).reshape(-1)]
    if ctx.attr(node, "num_outputs") is not None:
        chunk = -(-n // outs)
        return [min(chunk, n - k * chunk) for k in range(outs)]
    return [n // outs] * outs


@register_rule("Split")
class SplitRule(OpRule):
    """Output ``k`` is the window ``[offset_k, offset_k + size_k)`` of the input along ``axis``."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        axis = data_axis(node, slot, ctx)
        x = node.input[0]
        split_axis = _norm_axis(ctx.int_attr(node, "axis", 0), ctx.rank(x))
        x_slot = ctx.slot(x, axis)
        if axis != split_axis:
            return [Coupling(ctx.slot(y, axis), x_slot) for y in node.output if y]
        result = []
        offset = 0
        for y, size in zip(node.output, _split_sizes(node, ctx, split_axis), strict=False):
            if y:
                result.append(Coupling(ctx.slot(y, axis), x_slot, Offset(offset, size)))
            offset += size
        return result

    def rewrite(self, node: NodeProto, ctx: RewriteContext) -> None:
        x = node.input[0]
        axis = _norm_axis(ctx.int_attr(node, "axis", 0), len(ctx.shape(x)))
        if not ctx.changed(x, axis):
            return
        sizes = np.array([len(ctx.kept(y, axis)) for y in node.output], dtype=np.int64)
        if ctx.opset < 13:
            ctx.set_attr(node, "split", [int(s) for s in sizes])
            return
        for i, a in enumerate(node.attribute):
            if a.name == "num_outputs":
                del node.attribute[i]
                break
        if len(node.input) < 2:
            node.input.append("")
        ctx.set_const_input(node, 1, sizes)


def _slice_params(node: NodeProto, ctx: RuleContext | RewriteContext) -> tuple[list[int], ...]:
    """(starts, ends, axes, steps) as Python lists, from inputs (opset >= 10) or attributes."""
    rank = len(ctx.shape(node.input[0]))
    if ctx.opset < 10:
        starts = ctx.ints_attr(node, "starts")
        ends = ctx.ints_attr(node, "ends")
        axes = ctx.ints_attr(node, "axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        def value(i: int) -> list[int] | None:
            if len(node.input) > i and node.input[i]:
                return [int(v) for v in ctx.const(node.input[i]).reshape(-1)]
            return None

        starts, ends = value(1) or [], value(2) or []
        axes = value(3) or list(range(len(starts)))
        steps = value(4) or [1] * len(starts)
    return starts, ends, [_norm_axis(a, rank) for a in axes], steps


def _const_axes(node: NodeProto, ctx: RuleContext | RewriteContext) -> list[int] | None:
    """The axes a Slice slices when they are given as constants (opset >= 10, torch's ``x[..., :n]``), else
    None (the caller then reads every parameter as before)."""
    if ctx.opset < 10 or len(node.input) < 4 or not node.input[3]:
        return None
    value = ctx.folded(node.input[3])
    if value is None:
        return None
    rank = len(ctx.shape(node.input[0]))
    return [_norm_axis(int(a), rank) for a in value.reshape(-1)]


def _window(start: int, end: int, n: int) -> tuple[int, int]:
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    start, end = min(max(start, 0), n), min(max(end, 0), n)
    return start, max(end, start)


@register_rule("Slice")
class SliceRule(OpRule):
    """Along a sliced axis (step 1) the output is the window ``[start, end)`` of the input."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        axis = data_axis(node, slot, ctx)
        x, y = node.input[0], node.output[0]
        known = _const_axes(node, ctx)
        if known is not None and axis not in known:  # bounds of other axes may be computed at run time
            return [Coupling(ctx.slot(y, axis), ctx.slot(x, axis))]
        starts, ends, axes, steps = _slice_params(node, ctx)
        if axis not in axes:
            return [Coupling(ctx.slot(y, axis), ctx.slot(x, axis))]
        k = axes.index(axis)
        if steps[k] != 1:
            raise Blocked(f"{node_label(node)} slices axis {axis} with step {steps[k]}; only step 1 can be cut")
        start, end = _window(starts[k], ends[k], ctx.shape(x)[axis])
        return [Coupling(ctx.slot(y, axis), ctx.slot(x, axis), Offset(start, end - start))]

    def rewrite(self, node: NodeProto, ctx: RewriteContext) -> None:
        x = node.input[0]
        known = _const_axes(node, ctx)
        if known is not None and not any(ctx.changed(x, a) for a in known):
            return  # no sliced axis lost positions (its bounds may be computed at run time)
        starts, ends, axes, steps = _slice_params(node, ctx)
        changed = False
        for k, axis in enumerate(axes):
            if not ctx.changed(x, axis):
                continue
            start, end = _window(starts[k], ends[k], ctx.shape(x)[axis])
            kept = ctx.kept(x, axis)
            new_start = int(np.count_nonzero(kept < start))
            starts[k] = new_start
            ends[k] = new_start + int(np.count_nonzero((kept >= start) & (kept < end)))
            changed = True
        if not changed:
            return
        if ctx.opset < 10:
            ctx.set_attr(node, "starts", starts)
            ctx.set_attr(node, "ends", ends)
        else:
            ctx.set_const_input(node, 1, np.array(starts, dtype=np.int64))
            ctx.set_const_input(node, 2, np.array(ends, dtype=np.int64))


@register_rule("Transpose")
class TransposeRule(OpRule):
    """Output axis ``i`` is input axis ``perm[i]``."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        axis = data_axis(node, slot, ctx)
        x, y = node.input[0], node.output[0]
        rank = ctx.rank(x)
        perm = ctx.ints_attr(node, "perm") or list(range(rank - 1, -1, -1))
        if is_output(node, slot):
            return [Coupling(ctx.slot(x, perm[axis]), ctx.slot(y, axis))]
        return [Coupling(ctx.slot(x, axis), ctx.slot(y, perm.index(axis)))]


def _prod(values: tuple[int, ...] | list[int]) -> int:
    return int(np.prod(values, dtype=np.int64)) if len(values) else 1


def fold_axis(s_in: tuple[int, ...], a: int, s_out: tuple[int, ...]) -> tuple[int, int] | None:
    """Where axis ``a`` of shape ``s_in`` lands in ``s_out`` after a reshape: ``(axis, block)``.

    ``block == 1`` means the axis survives as is; ``block > 1`` means it is the leading axis of a merge
    (each position becomes ``block`` consecutive positions). ``None`` when the axis is split or mixed.
    """
    c = s_in[a]
    if c <= 1:
        return None
    prefix = _prod(s_in[:a])
    run = 1
    for b, size in enumerate(s_out):
        if run == prefix and size % c == 0:
            block = size // c
            tail = 1
            for d in s_in[a + 1:]:
                if tail >= block:
                    break
                tail *= d
            if tail == block:
                return b, block
        run *= size
    return None


@register_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
class ReshapeRule(OpRule):
    """Reshaping ops, from inferred shapes: an axis is kept or folded as the leading axis of a merge."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        axis = data_axis(node, slot, ctx)
        y = node.output[0]
        runtime = node.op_type == "Reshape" and not ctx.is_const(node.input[1])
        heads = radix_couplings(node, axis, is_output(node, slot), ctx) if node.op_type == "Reshape" else None
        if heads is None and node.op_type == "Reshape":
            heads = split_couplings(node, axis, is_output(node, slot), ctx)
        if heads is None and node.op_type == "Reshape":
            heads = packed_split_couplings(node, axis, is_output(node, slot), ctx)
        if heads is None and node.op_type == "Reshape":
            heads = patch_merge_couplings(node, axis, is_output(node, slot), ctx)
        if heads is None:
            heads = self._folds(node, axis, is_output(node, slot), ctx)
        if runtime:  # the output axis that changes with the cut: a constant piece, -1, or a shape read following it
            out_axis = heads[0].a.axis if heads[0].a.tensor == y else heads[0].b.axis
            try:
                check_target_entry(node, out_axis, ctx, infer=True)
            except Blocked:
                if not follow_target(node, out_axis, ctx):
                    raise
        return heads

    def _folds(self, node: NodeProto, axis: int, output_side: bool, ctx: RuleContext) -> list[Coupling]:
        """An axis kept as is, or folded as the leading axis of a merge."""
        x, y = node.input[0], node.output[0]
        s_in, s_out = ctx.shape(x), ctx.shape(y)
        if output_side:
            for a in range(len(s_in)):
                found = fold_axis(s_in, a, s_out)
                if found is not None and found[0] == axis:
                    block = found[1]
                    return [Coupling(ctx.slot(x, a), ctx.slot(y, axis), Block(block) if block > 1 else Identity())]
            factor = factor_coupling(node, axis, True, ctx)
            if factor is not None:
                return [factor]
            raise Blocked(f"{node_label(node)} builds axis {axis} of '{y}' {s_out} from several axes of "
                          f"'{x}' {s_in} (or splits one); only a kept or leading-folded axis can be cut")
        where = fold_axis(s_in, axis, s_out)
        factor = factor_coupling(node, axis, False, ctx) if where is None else None
        if factor is not None:
            return [factor]
        if where is None:
            raise Blocked(f"{node_label(node)} splits or mixes axis {axis} of '{x}' {s_in} into {s_out} "
                          f"(e.g. a channel shuffle); this cannot be cut exactly")
        b, block = where
        return [Coupling(ctx.slot(x, axis), ctx.slot(y, b), Block(block) if block > 1 else Identity())]

    def rewrite(self, node: NodeProto, ctx: RewriteContext) -> None:
        if node.op_type != "Reshape":
            return
        y = node.output[0]
        old, new = ctx.shape(y), ctx.new_shape(y)
        if old == new:
            return
        if not ctx.index.is_constant(node.input[1]):
            if not follows_cut(node, ctx):  # run-time reads of the cut axes give it its new shape by themselves
                rewrite_target(node, ctx)
            return
        target = ctx.const(node.input[1]).astype(np.int64).reshape(-1).copy()
        for b, (o, n) in enumerate(zip(old, new, strict=True)):
            if o != n and target[b] > 0:
                target[b] = n
        ctx.set_const_input(node, 1, target)


@register_rule("Shape", "Size")
class ShapeRule(OpRule):
    """``Shape``/``Size`` carry no channel, but their values change when a dimension they report is cut.

    A ``Shape`` whose ``start``/``end`` leave the cut axis out does not depend on the channel count. A read of
    the cut axis is safe when everything computed from it lands in shape entries whose axes shrink with it
    (``x.view(-1, x.size(-1))``, ``repeat_kv``'s expand target): those are coupled to the cut axis
    (:func:`~onnxprune.structured.shape_reads.follow_read`). Any other use (arithmetic that mixes it, a
    graph output, data) would silently change after the cut, so the slot is blocked with the use named.
    """

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        x = node.input[0]
        if slot.tensor in node.output:
            raise Blocked(f"{node_label(node)} output '{slot.tensor}' is a shape, not data; it cannot be cut")
        if node.op_type == "Size":
            raise Blocked(f"{node_label(node)} reads the element count of '{x}', which changes with axis "
                          f"{slot.axis}")
        rank = ctx.rank(x)
        start = ctx.int_attr(node, "start", 0) if ctx.opset >= 15 else 0
        end_attr = ctx.attr(node, "end") if ctx.opset >= 15 else None
        end = int(end_attr) if isinstance(end_attr, int) else rank
        start, end = (min(max(v + rank if v < 0 else v, 0), rank) for v in (start, end))
        if not start <= slot.axis < end:
            return []
        follow_read(node, slot.axis, ctx)
        return []
