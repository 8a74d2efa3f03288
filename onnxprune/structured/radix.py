"""Split attention (ResNeSt): the Reshapes that take a width apart into radix parts, cut inside every part.

Why: ResNeSt's ``SplitAttn`` computes ``RC = radix * C`` channels with one grouped Conv, reshapes them to
``(B, radix, C, H, W)`` (the target's ``C`` read as ``RC // radix`` from a run-time ``Shape``), sums the parts
(``ReduceSum`` over the radix axis), and weighs them by ``rsoftmax``: the attention logits are reshaped to
``(B, cardinality, radix, C / cardinality)``, transposed, softmaxed over the radix axis and reshaped back. The
radix axis is what the parts are combined across, so it is never a channel; the channel is the innermost
axis, and channel ``i`` of it is flat position ``p`` with ``p % size == i`` in every part (and every
cardinal group). This module reads such a Reshape: for the run of axes that one flat axis is split into (or
merged from), the innermost axis is coupled to the flat axis by that table, so every part loses the same
in-part channels, and any other axis of the run (the radix parts, the cardinal groups) is refused. The
target's innermost entry then follows the cut (a constant is rewritten, ``-1`` infers it, and ``RC // radix``
is proven to follow by :mod:`onnxprune.structured.shape_reads`); the radix entry never changes, so the
softmax axis and the sum over parts stay as they are.

Which reading a split takes is read from dataflow, not names: a Reshape is read here only when some axis of
it (other than the cut one) is combined across within a few moves (``Transpose``/``Squeeze``/``Unsqueeze``)
and elementwise ops: a ``Softmax``/``LogSoftmax`` (opset 13 on) or a ``ReduceSum``/``ReduceMean``/``ReduceMax`` over
that axis, downstream of the Reshape's output or upstream of its input. Multi-head attention never
normalizes over its head axis, and a flatten ``C x H x W`` never combines across ``C``, so their readings
(:mod:`onnxprune.structured.attention`, :mod:`onnxprune.structured.packed_heads`, the leading fold) are
untouched. Either reading is exact by itself: this choice only decides which channels can be cut together.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.ir import node_label
from onnxprune.structured.attention import moved_axis
from onnxprune.structured.axes import Coupling, Table
from onnxprune.structured.rules.base import Blocked, RuleContext
from onnxprune.structured.rules.elementwise import BINARY_OPS, UNARY_OPS
from onnxprune.structured.rules.pool import reduce_axes

#: Ops that combine positions across one axis (the radix parts): softmax over it, a sum or mean of the parts.
_COMBINE = frozenset({"Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "ReduceMax"})
_MOVES = frozenset({"Transpose", "Squeeze", "Unsqueeze"})
_ELEMENTWISE = frozenset(UNARY_OPS) | frozenset(BINARY_OPS)
#: Nodes one search visits (split attention combines its parts one or two ops after the Reshape).
MAX_VISITS = 24


def _combined_axes(node: NodeProto, ctx: RuleContext) -> set[int] | None:
    """The axes of its data input ``node`` combines across (None: not a combining op, or unknown axes)."""
    if node.op_type not in _COMBINE or node.domain not in ("", "ai.onnx"):
        return None
    rank = ctx.rank(node.input[0])
    if node.op_type in ("Softmax", "LogSoftmax"):
        if ctx.opset < 13:  # older Softmax flattens the tail: not one axis
            return None
        axis = ctx.int_attr(node, "axis", -1)
        return {axis + rank if axis < 0 else axis}
    try:
        return set(reduce_axes(node, ctx, rank))
    except Blocked:  # axes computed at run time
        return None


def _forward(node: NodeProto, name: str, axis: int, ctx: RuleContext) -> tuple[str, int] | None:
    """Where axis ``axis`` of input ``name`` of a move or elementwise ``node`` lands in its output (None: not
    followed: another op, a broadcast size-1 axis, or an axis the move drops)."""
    y = node.output[0] if node.output else ""
    if not y or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in _MOVES:
        if node.input[0] != name:
            return None
        moved = moved_axis(node, axis, ctx)
        return None if moved is None else (y, moved)
    if node.op_type not in _ELEMENTWISE:
        return None
    out_axis = axis + ctx.rank(y) - ctx.rank(name)
    if ctx.dim(name, axis) != ctx.dim(y, out_axis):
        return None
    return y, out_axis


def _step(t: str, a: int, ctx: RuleContext, downstream: bool) -> tuple[bool, list[tuple[str, int]]]:
    """One step of :func:`combined_across` from axis ``a`` of ``t``: whether a neighbour combines across it,
    and where the axis goes next."""
    if downstream:
        nxt = []
        for user in ctx.index.consumers.get(t, []):
            if user.input and user.input[0] == t and a in (_combined_axes(user, ctx) or ()):
                return True, []
            moved = _forward(user, t, a, ctx)
            if moved is not None:
                nxt.append(moved)
        return False, nxt
    producer = ctx.index.producer.get(t)
    if producer is None or not producer.input or producer.domain not in ("", "ai.onnx"):
        return False, []
    if producer.op_type in ("Softmax", "LogSoftmax"):
        return a in (_combined_axes(producer, ctx) or ()), []
    if producer.op_type == "Transpose":
        perm = ctx.ints_attr(producer, "perm") or list(range(ctx.rank(t) - 1, -1, -1))
        return False, [(producer.input[0], perm[a])]
    return False, [(producer.input[0], a)] if producer.op_type in UNARY_OPS else []


def combined_across(name: str, axis: int, ctx: RuleContext, *, downstream: bool) -> bool:
    """Whether positions along axis ``axis`` of ``name`` are combined with each other (softmaxed over,
    summed or averaged) within a few moves and elementwise ops: after it (``downstream``) or before it (only
    the producer chain through moves and unary ops, where a softmax over the axis made it)."""
    stack, seen, budget = [(name, axis)], set(), MAX_VISITS
    while stack and budget > 0:
        t, a = stack.pop()
        if (t, a) in seen:
            continue
        seen.add((t, a))
        budget -= 1
        try:  # an unknown shape on the way ends that path: the Reshape is then read as before, never blocked here
            found, nxt = _step(t, a, ctx, downstream)
        except Blocked:
            continue
        if found:
            return True
        stack.extend(nxt)
    return False


def reshape_runs(s_in: tuple[int, ...], s_out: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """The runs of a reshape: ``(input axes, output axes)`` of sizes > 1 with the same product at the same
    offset, in order (None when a size is 0 or the totals differ)."""
    ins = [a for a, n in enumerate(s_in) if n != 1]
    outs = [b for b, n in enumerate(s_out) if n != 1]
    if 0 in s_in or 0 in s_out:
        return None
    runs: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(ins) or j < len(outs):
        run_in, run_out, p, q = [], [], 1, 1
        while True:
            if p <= q and i < len(ins):
                run_in.append(ins[i])
                p *= s_in[ins[i]]
                i += 1
            elif j < len(outs):
                run_out.append(outs[j])
                q *= s_out[outs[j]]
                j += 1
            else:
                return None
            if p == q:
                break
        runs.append((run_in, run_out))
    return runs


def radix_couplings(node: NodeProto, axis: int, output_side: bool, ctx: RuleContext) -> list[Coupling] | None:
    """Couplings of a split-attention Reshape for ``axis`` (of the input, or of the output when ``output_side``),
    or None when the Reshape is no such split or merge there (the caller reads it as before).

    Raises:
        Blocked: ``axis`` is a radix or cardinal-group axis of the split (cut only inside every part).
    """
    x, y = node.input[0], node.output[0]
    s_in, s_out = ctx.shape(x), ctx.shape(y)
    runs = reshape_runs(s_in, s_out)
    if runs is None:
        return None
    here = next(((r_in, r_out) for r_in, r_out in runs if axis in (r_out if output_side else r_in)), None)
    if here is None:
        return None
    r_in, r_out = here
    if len(r_in) == 1 and len(r_out) > 1:  # a split: the parts are output axes, the innermost is the channel
        flat, many, channel, parts_side = (x, r_in[0]), y, r_out[-1], True
    elif len(r_out) == 1 and len(r_in) > 1:  # a merge of parts back into one flat axis
        flat, many, channel, parts_side = (y, r_out[0]), x, r_in[-1], False
    else:
        return None
    others = [(x, a, False) for a, n in enumerate(s_in) if n > 1] + [(y, b, True) for b, n in enumerate(s_out) if n > 1]
    if not any(combined_across(t, a, ctx, downstream=down) for t, a, down in others
               if (t, a) not in ((many, channel), flat)):
        return None
    if (output_side == parts_side) and axis != channel:
        raise Blocked(f"{node_label(node)}: axis {axis} of '{many}' {ctx.shape(many)} is a part axis of a split "
                      f"attention (radix parts or cardinal groups, combined across); onnxprune cuts the same "
                      f"channels inside every part (axis {channel}), never a part")
    n = ctx.shape(flat[0])[flat[1]]
    positions = np.arange(n, dtype=np.int64)
    return [Coupling(ctx.slot(many, channel), ctx.slot(*flat), Table(positions, positions % ctx.shape(many)[channel]))]
