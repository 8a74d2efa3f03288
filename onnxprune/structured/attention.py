"""Attention heads: the reshape that splits a projection's width into ``(heads, head_dim)``, and the
shape constants that encode the head count.

Why this is enough to prune whole heads, proven from dataflow rather than node names: multi-head attention
is ``Q, K, V = x W_q, x W_k, x W_v`` → ``Reshape [.., C] -> [.., H, D]`` → Transpose → ``Q·Kᵀ`` (scaled,
masked) → Softmax → ``·V`` → Transpose → ``Reshape [.., H, D] -> [.., H*D]`` → output projection. Every op
after the split keeps the head axis as a batch axis (MatMul, Softmax over the last axis, broadcast scale
and mask, Transpose), so the existing op rules already carry it; the merge reshape folds it back as a
leading axis (a :class:`~onnxprune.structured.axes.Block` of ``D`` features per head). What was missing is
the split itself: here head ``h`` of the output is the block ``[h*D, (h+1)*D)`` of the input channels
(``Block(D)``), so Q, K and V channels join their heads' classes, a head is one root channel of the group,
and a plan can only keep or drop whole heads. The ``head_dim`` axis is never cut.

Reshape targets are constants or, as torch exports them, computed at run time:
``Concat(Unsqueeze(Gather(Shape(x), i)), ..., num_heads, head_dim)``. :func:`target_pieces` reads such a
target as pieces; an entry of the target may change with the cut only when its piece is a constant
(an initializer, a ``Constant`` node, or the ``Unsqueeze`` of one), which the surgery rewrites. Runtime
pieces stay as they are: a ``Shape`` of a cut axis is blocked by the ``Shape`` rule, so what they compute
cannot change. Any other shape arithmetic (a piece computed by another op at a position that must change,
a target not built by ``Concat``, a target shared with other nodes) blocks with its reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from onnx import NodeProto

from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.ir import node_label
from onnxprune.structured.axes import Block, Coupling
from onnxprune.structured.rules.base import Blocked, RewriteContext, RuleContext

log = logging.getLogger(__name__)


def _prod(values: tuple[int, ...]) -> int:
    return int(np.prod(values, dtype=np.int64)) if len(values) else 1


def head_split(s_in: tuple[int, ...], s_out: tuple[int, ...], axis: int) -> int | None:
    """The output axis ``b`` where input axis ``axis`` is split into ``(s_out[b], s_out[b+1])``, both > 1.

    Every axis before and after is unchanged in total size, so input channel ``c`` lands at
    ``(c // D, c % D)`` with ``D = s_out[b+1]``: the head axis ``b`` is a ``Block(D)`` of the input axis.
    """
    c = s_in[axis]
    prefix, suffix = _prod(s_in[:axis]), _prod(s_in[axis + 1:])
    for b in range(len(s_out) - 1):
        h, d = s_out[b], s_out[b + 1]
        if h > 1 and d > 1 and h * d == c and _prod(s_out[:b]) == prefix and _prod(s_out[b + 2:]) == suffix:
            return b
    return None


def split_couplings(node: NodeProto, axis: int, output_side: bool, ctx: RuleContext) -> list[Coupling] | None:
    """Couplings of a Reshape that splits a width into heads, or None when ``axis`` is no head split.

    ``axis`` is an axis of the input (``output_side`` False) or of the output. The per-head axis of the
    output is refused: heads are cut whole, never inside.
    """
    x, y = node.input[0], node.output[0]
    s_in, s_out = ctx.shape(x), ctx.shape(y)
    if output_side:
        for a in range(len(s_in)):
            b = head_split(s_in, s_out, a)
            if b is None:
                continue
            if b == axis:
                return [Coupling(ctx.slot(y, b), ctx.slot(x, a), Block(s_out[b + 1]))]
            if b + 1 == axis:
                raise Blocked(f"{node_label(node)}: axis {axis} of '{y}' {s_out} is the per-head dim of a head "
                              f"split; heads are cut whole, never inside")
        return None
    b = head_split(s_in, s_out, axis)
    if b is None:
        return None
    return [Coupling(ctx.slot(y, b), ctx.slot(x, axis), Block(s_out[b + 1]))]


@dataclass(frozen=True)
class TargetPiece:
    """A run of entries of a reshape target: a constant the surgery can rewrite, or a runtime value.

    Attributes:
        start: first target entry the piece covers.
        values: the entries (int64), or None when computed at run time.
        node: the node reading the constant (the Reshape, the Concat or an Unsqueeze of a scalar).
        input_index: which input of ``node`` the constant is.
        origin: for a runtime piece, the op that computes it (named in blockers).
    """

    start: int
    length: int
    values: np.ndarray | None
    node: NodeProto
    input_index: int
    origin: str = ""


def _single_reader(name: str, ctx: RuleContext | RewriteContext, what: str) -> None:
    readers = ctx.index.consumers.get(name, [])
    if len(readers) > 1 or name in ctx.index.graph_outputs:
        raise Blocked(f"{what} '{name}' is read by {len(readers)} nodes; rewriting its head count would change "
                      f"them all")


def target_pieces(node: NodeProto, ctx: RuleContext | RewriteContext) -> list[TargetPiece]:
    """The pieces of a Reshape's target (a constant, or a ``Concat`` of constants and runtime values).

    Raises:
        Blocked: the target is computed by anything but ``Concat`` (axis 0), or is shared with other nodes.
    """
    target = node.input[1]
    index = ctx.index
    if index.is_constant(target):
        value = index.const_value(target)
        if value is None:
            raise Blocked(f"{node_label(node)}: the target '{target}' has no readable value")
        return [TargetPiece(0, value.size, value.astype(np.int64).reshape(-1), node, 1)]
    concat = index.producer.get(target)
    if concat is None or concat.op_type != "Concat" or ctx.int_attr(concat, "axis", 0) != 0:
        op = f"{node_label(concat)}" if concat is not None else "a graph input"
        raise Blocked(f"{node_label(node)} computes its target shape at runtime with {op}; onnxprune cannot prove "
                      f"it follows the cut (only a Concat of constants and runtime dims is read; constant-fold the "
                      f"model first)")
    _single_reader(target, ctx, f"{node_label(node)}: the target")
    pieces: list[TargetPiece] = []
    start = 0
    for k, name in enumerate(concat.input):
        shape = ctx._lookup(name)
        if shape is None or len(shape) != 1 or not isinstance(shape[0], int) or shape[0] < 0:
            raise Blocked(f"{node_label(concat)}: the length of target piece '{name}' is unknown ({shape})")
        n = int(shape[0])
        value = index.const_value(name) if index.is_constant(name) else None
        if value is not None:
            pieces.append(TargetPiece(start, n, value.astype(np.int64).reshape(-1), concat, k))
        else:
            producer = index.producer.get(name)
            data = producer.input[0] if producer is not None and producer.input else ""
            scalar = index.const_value(data) if producer is not None and producer.op_type == "Unsqueeze" \
                and index.is_constant(data) else None
            if scalar is not None and producer is not None:
                _single_reader(name, ctx, f"{node_label(concat)}: the target piece")
                pieces.append(TargetPiece(start, n, scalar.astype(np.int64).reshape(-1), producer, 0))
            else:
                origin = node_label(producer) if producer is not None else f"graph input '{name}'"
                pieces.append(TargetPiece(start, n, None, concat, k, origin))
        start += n
    return pieces


def check_target_entry(node: NodeProto, entry: int, ctx: RuleContext) -> None:
    """Raise :class:`Blocked` unless target entry ``entry`` of a runtime-target Reshape can be rewritten."""
    for piece in target_pieces(node, ctx):
        if piece.start <= entry < piece.start + piece.length:
            if piece.values is None:
                raise Blocked(f"{node_label(node)}: entry {entry} of its target, which changes with the cut, is "
                              f"computed at runtime by {piece.origin}; onnxprune rewrites only constant pieces "
                              f"(constant-fold the model first)")
            if piece.values[entry - piece.start] == 0:
                raise Blocked(f"{node_label(node)}: entry {entry} of its target copies an input dim (0); onnxprune "
                              f"cannot prove which")
            return
    raise Blocked(f"{node_label(node)}: its target has no entry {entry}")


def rewrite_target(node: NodeProto, ctx: RewriteContext, *, offset: int = 0) -> None:
    """Write the new sizes of the output axes that lost positions into the target's constant pieces.

    Target entry ``e`` is output axis ``e + offset`` (an Expand target may be shorter than its output). An
    entry of 1 (Expand: keep the input's size), 0 (Reshape: copy it) or -1 (infer it) needs no rewrite.
    """
    y = node.output[0]
    old, new = ctx.shape(y), ctx.new_shape(y)
    if old == new:
        return
    try:
        pieces = target_pieces(node, ctx)
    except Blocked as exc:  # the analysis blocked such groups: reaching here is a bug
        raise OnnxPruneError(f"{node_label(node)}: the target cannot be rewritten at surgery ({exc}); this is a "
                             f"bug in the attention rule, please report it with the model") from exc
    for piece in pieces:
        if piece.values is None:
            continue
        values = piece.values.copy()
        for e in range(piece.start, piece.start + piece.length):
            b = e + offset
            if old[b] != new[b] and values[e - piece.start] > 1:
                values[e - piece.start] = new[b]
        if not np.array_equal(values, piece.values):
            original = ctx.const(piece.node.input[piece.input_index])
            log.debug("%s: target piece %s -> %s", node_label(node), piece.values.tolist(), values.tolist())
            ctx.set_const_input(piece.node, piece.input_index, values.reshape(original.shape).astype(original.dtype))
