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
a target not built by ``Concat``, a constant piece behind an ``Unsqueeze`` shared with other nodes) blocks
with its reason. A target ``Concat`` read by several reshapes is rewritten once per distinct result
(:mod:`onnxprune.structured.target_versions`). A width packed as ``(parts, heads, head_dim)`` is read by
:mod:`onnxprune.structured.packed_heads`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from onnx import NodeProto

from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.ir import node_label
from onnxprune.structured.axes import Block, Coupling, Table
from onnxprune.structured.rules.base import Blocked, RewriteContext, RuleContext
from onnxprune.structured.target_versions import PieceEdit, is_shared, write_versions, written

if TYPE_CHECKING:  # analysis imports the rules, which import this module
    from onnxprune.structured.analysis import ChannelGroup

log = logging.getLogger(__name__)


def attention_heads(group: ChannelGroup) -> dict[str, int] | None:
    """``{"heads": n, "head_channels": k}`` when a group is attention heads cut whole, else None.

    Recognised by its effect: every root channel is a block of ``k > 1`` input rows of the output projection
    (its sinks) and of MatMul/Gemm columns (its sources, Q/K/V, packed or not, or the packed weight of
    onnxruntime's fused ``Attention``). With grouped-query attention a root is a KV group and ``k`` counts the
    channels of all its query heads: then ``"query_heads_per_kv"`` (> 1) says so, and that whole KV groups are
    cut (a KV head with all its query heads, so the repeat factor still divides), never query heads inside a
    group.
    """
    sinks, sources = group.sinks, group.sources
    if not sinks or not sources or any(c.op_type not in ("MatMul", "Gemm") for c in sinks) \
            or any(c.op_type not in ("MatMul", "Gemm", "Attention") for c in sources):
        return None
    sizes = {len(c.positions(np.array([0], dtype=np.int64))) for c in sinks}
    if len(sizes) != 1 or min(sizes) <= 1 or not all(isinstance(c.map, Block) for c in sinks):
        return None
    if all(len(c.positions(np.array([0], dtype=np.int64))) == 1 for c in sources):
        return None
    head_channels = sizes.pop()
    result = {"heads": group.size, "head_channels": head_channels}
    if all(isinstance(c.map, Block) for c in sources):  # K/V hold one head per root, Q n_rep of them
        smallest = min(len(c.positions(np.array([0], dtype=np.int64))) for c in sources)
        if head_channels % smallest == 0 and head_channels // smallest > 1:
            result["query_heads_per_kv"] = head_channels // smallest
    return result


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


def moved_axis(node: NodeProto, axis: int, ctx: RuleContext) -> int | None:
    """Where axis ``axis`` of the input of an Unsqueeze/Squeeze/Transpose lands in its output (None: gone)."""
    rank = ctx.rank(node.input[0])
    if node.op_type == "Transpose":
        perm = ctx.ints_attr(node, "perm") or list(range(rank - 1, -1, -1))
        return perm.index(axis)
    given = ctx.folded(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    axes = [int(a) for a in given.reshape(-1)] if given is not None else ctx.ints_attr(node, "axes")
    if node.op_type == "Unsqueeze":
        out_rank = rank + len(axes)
        inserted = {a + out_rank if a < 0 else a for a in axes}
        kept = [b for b in range(out_rank) if b not in inserted]
        return kept[axis]
    shape = ctx.shape(node.input[0])
    squeezed = {a + rank if a < 0 else a for a in axes} if axes else {a for a in range(rank) if shape[a] == 1}
    return None if axis in squeezed else axis - sum(1 for a in squeezed if a < axis)


def parts_axis(name: str, axis: int, ctx: RuleContext) -> bool:
    """Whether axis ``axis`` of ``name`` only selects parts: every reader (after Unsqueeze/Squeeze/Transpose
    moves) is a Gather with constant indices on that axis, as torch cuts a packed QKV projection apart."""
    for _ in range(16):
        users = ctx.index.consumers.get(name, [])
        if not users or name in ctx.index.graph_outputs:
            return False
        if len(users) == 1 and users[0].op_type in ("Unsqueeze", "Squeeze", "Transpose"):
            moved = moved_axis(users[0], axis, ctx)
            if moved is None:
                return False
            name, axis = users[0].output[0], moved
            continue
        rank = ctx.rank(name)
        return all(u.input[0] == name and name not in u.input[1:] and selects_parts(u, axis, rank, ctx)
                   for u in users)
    return False


def selects_parts(user: NodeProto, axis: int, rank: int, ctx: RuleContext) -> bool:
    """Whether ``user`` only picks whole parts along axis ``axis`` of its data input: a Gather with constant
    indices (torch's ``unbind`` as the legacy exporter writes it), a Split (``unbind``/``chunk``), or a Slice
    with constant bounds whose axes include ``axis`` (the dynamo exporter's ``unbind``)."""
    if user.op_type == "Gather":
        return ctx.int_attr(user, "axis", 0) % rank == axis and ctx.folded(user.input[1]) is not None
    if user.op_type == "Split":
        return ctx.int_attr(user, "axis", 0) % rank == axis
    if user.op_type == "Slice" and ctx.opset >= 10 and len(user.input) > 3 and user.input[3]:
        axes = ctx.folded(user.input[3])
        return axes is not None and axis in {int(a) % rank for a in axes.reshape(-1)} and all(
            ctx.folded(i) is not None for i in user.input[1:] if i)
    return False


def split_couplings(node: NodeProto, axis: int, output_side: bool, ctx: RuleContext) -> list[Coupling] | None:
    """Couplings of a Reshape that splits a width ``P*Q`` into ``(P, Q)``, or None when ``axis`` is no such split.

    Two readings, chosen by what reads the leading ``P`` axis: when only Gathers with constant indices,
    Splits or Slices (:func:`selects_parts`) select its parts (a packed ``[3E]`` QKV projection reshaped to
    ``[3, E]``), channel ``j`` of the ``Q`` axis is input positions ``k*Q + j`` of every part; otherwise the
    ``P`` axis is the heads and each head is a block of ``Q`` input channels, and the per-head axis is
    refused: heads are cut whole, never inside.
    ``axis`` is an axis of the input (``output_side`` False) or of the output.
    """
    x, y = node.input[0], node.output[0]
    s_in, s_out = ctx.shape(x), ctx.shape(y)
    candidates = range(len(s_in)) if output_side else [axis]
    for a in candidates:
        b = head_split(s_in, s_out, a)
        if b is None or (output_side and axis not in (b, b + 1)):
            continue
        p, q = s_out[b], s_out[b + 1]
        if parts_axis(y, b, ctx):
            if output_side and axis == b:
                raise Blocked(f"{node_label(node)}: axis {axis} of '{y}' {s_out} selects the parts of a packed "
                              f"projection; it cannot be cut")
            positions = np.arange(p * q, dtype=np.int64)
            return [Coupling(ctx.slot(y, b + 1), ctx.slot(x, a), Table(positions, positions % q))]
        if output_side and axis == b + 1:
            raise Blocked(f"{node_label(node)}: axis {axis} of '{y}' {s_out} is the per-head dim of a head "
                          f"split; heads are cut whole, never inside")
        return [Coupling(ctx.slot(y, b), ctx.slot(x, a), Block(q))]
    return None


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


def _piece_length(name: str, ctx: RuleContext | RewriteContext) -> int | None:
    """Length of a 1-D piece of a target: inferred, or a ``Slice`` of a ``Shape`` with constant bounds."""
    shape = ctx._lookup(name)
    if shape is not None and len(shape) == 1 and isinstance(shape[0], int) and shape[0] >= 0:
        return int(shape[0])
    node = ctx.index.producer.get(name)
    if node is None or node.op_type != "Slice" or ctx.opset < 10:
        return None
    source = ctx.index.producer.get(node.input[0])
    if source is None or source.op_type != "Shape" or ctx.opset >= 15 and any(a.name in ("start", "end")
                                                                                for a in source.attribute):
        return None
    bounds = [ctx.folded(node.input[k]) if len(node.input) > k and node.input[k] else None for k in (1, 2, 3, 4)]
    if bounds[0] is None or bounds[1] is None or (len(node.input) > 3 and node.input[3] and bounds[2] is None):
        return None
    step = int(bounds[3].reshape(-1)[0]) if bounds[3] is not None else 1
    rank = len(ctx._lookup(source.input[0]) or ())
    return len(range(rank)[slice(int(bounds[0].reshape(-1)[0]), int(bounds[1].reshape(-1)[0]), step)]) \
        if rank else None


def target_pieces(node: NodeProto, ctx: RuleContext | RewriteContext) -> list[TargetPiece]:
    """The pieces of a Reshape's target (a constant, or a ``Concat`` of constants and runtime values).

    A ``Concat`` read by several nodes (the dynamo exporter de-duplicates identical targets across heads and
    layers) is read all the same: the surgery gives each distinct rewrite its own copy
    (:mod:`onnxprune.structured.target_versions`).

    Raises:
        Blocked: the target is computed by anything but ``Concat`` (axis 0), or is a graph output.
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
    if target in index.graph_outputs:  # readers of a shared target get their own versions at surgery; an
        raise Blocked(f"{node_label(node)}: the target '{target}' is a graph output; rewriting its head count "
                      f"would change the model's outputs")  # output has no version to give
    return _concat_pieces(concat, 0, ctx.rank(node.output[0]), ctx)


def _concat_pieces(concat: NodeProto, start: int, total: int, ctx: RuleContext | RewriteContext) -> list[TargetPiece]:
    """Pieces of a ``Concat`` (axis 0) of ``total`` entries starting at entry ``start``; a piece that is itself
    a single-reader ``Concat`` (torch's ``unflatten`` sizes) is read piece by piece."""
    index = ctx.index
    lengths = [_piece_length(name, ctx) for name in concat.input]
    unknown = [k for k, n in enumerate(lengths) if n is None]
    if len(unknown) == 1:  # the entries add up to the whole
        lengths[unknown[0]] = total - sum(n for n in lengths if n is not None)
    pieces: list[TargetPiece] = []
    for k, name in enumerate(concat.input):
        n = lengths[k]
        if n is None or n < 0:
            raise Blocked(f"{node_label(concat)}: the length of target piece '{name}' is unknown "
                          f"({ctx._lookup(name)})")
        value = index.const_value(name) if index.is_constant(name) else None
        producer = index.producer.get(name)
        data = producer.input[0] if producer is not None and producer.input else ""
        if value is not None:
            pieces.append(TargetPiece(start, n, value.astype(np.int64).reshape(-1), concat, k))
        elif producer is not None and producer.op_type == "Unsqueeze" and index.is_constant(data) \
                and index.const_value(data) is not None:
            _single_reader(name, ctx, f"{node_label(concat)}: the target piece")
            scalar = np.asarray(index.const_value(data))
            pieces.append(TargetPiece(start, n, scalar.astype(np.int64).reshape(-1), producer, 0))
        elif producer is not None and producer.op_type == "Concat" and ctx.int_attr(producer, "axis", 0) == 0 \
                and len(index.consumers.get(name, [])) == 1 and name not in index.graph_outputs:
            pieces.extend(_concat_pieces(producer, start, n, ctx))
        else:
            origin = node_label(producer) if producer is not None else f"graph input '{name}'"
            pieces.append(TargetPiece(start, n, None, concat, k, origin))
        start += n
    return pieces


#: Ops whose outputs are non-negative when their inputs are (shape entries read and combined).
_NONNEGATIVE_OPS = frozenset({"Shape", "Gather", "Slice", "Squeeze", "Unsqueeze", "Cast", "Concat", "Reshape",
                              "Identity", "Mul", "Div"})


def _nonnegative(name: str, ctx: RuleContext, budget: int = 64) -> bool:
    """Whether a runtime shape value is provably >= 0: built from ``Shape`` by ops that keep signs, with
    non-negative constant factors (indices of Gather/Slice may be anything)."""
    stack, seen = [name], set()
    while stack and budget > 0:
        t = stack.pop()
        budget -= 1
        if t in seen:
            continue
        seen.add(t)
        node = ctx.index.producer.get(t)
        if node is None or ctx.index.is_constant(t):
            value = ctx.folded(t)
            if value is None or (value < 0).any():
                return False
            continue
        if node.op_type not in _NONNEGATIVE_OPS:
            return False
        if node.op_type == "Shape":
            continue
        data = node.input[:1] if node.op_type in ("Gather", "Slice", "Squeeze", "Unsqueeze", "Reshape") else \
            list(node.input)
        stack.extend(i for i in data if i)
    return not stack


def check_target_entry(node: NodeProto, entry: int, ctx: RuleContext, *, infer: bool = False) -> None:
    """Raise :class:`Blocked` unless target entry ``entry`` of a runtime target can be rewritten.

    A constant piece is rewritten with the new size. With ``infer`` (a Reshape), a runtime piece of one
    entry is replaced by ``-1`` (the size inferred from the others), when no other entry can be ``-1``: the
    other constant pieces are not, and the other runtime pieces are provably non-negative shape values.
    """
    pieces = target_pieces(node, ctx)
    for piece in pieces:
        if piece.start <= entry < piece.start + piece.length:
            if piece.values is None:
                others = [p for p in pieces if p is not piece]
                literal_zero = ctx.opset >= 14 and ctx.int_attr(node, "allowzero", 0) == 1  # -1 needs no 0 dims
                if infer and piece.length == 1 and not literal_zero and all(
                        (p.values is not None and not (p.values < 0).any())
                        or (p.values is None and _nonnegative(p.node.input[p.input_index], ctx)) for p in others):
                    return
                raise Blocked(f"{node_label(node)}: entry {entry} of its target, which changes with the cut, is "
                              f"computed at runtime by {piece.origin}; onnxprune rewrites only constant pieces, or "
                              f"a Reshape's single runtime entry when the others are known dims (constant-fold the "
                              f"model first)")
            if piece.values[entry - piece.start] == 0:
                raise Blocked(f"{node_label(node)}: entry {entry} of its target copies an input dim (0); onnxprune "
                              f"cannot prove which")
            return
    raise Blocked(f"{node_label(node)}: its target has no entry {entry}")


def rewrite_target(node: NodeProto, ctx: RewriteContext, *, offset: int = 0) -> None:
    """Write the new sizes of the output axes that lost positions into the target's constant pieces.

    Target entry ``e`` is output axis ``e + offset`` (an Expand target may be shorter than its output). An
    entry of 1 (Expand: keep the input's size), 0 (Reshape: copy it) or -1 (infer it) needs no rewrite. A
    target read by several nodes gets one version per distinct rewrite (:func:`write_versions`).
    """
    y = node.output[0]
    if ctx.shape(y) == ctx.new_shape(y) or written(node, ctx):
        return
    try:
        pieces = target_pieces(node, ctx)
    except Blocked as exc:  # the analysis blocked such groups: reaching here is a bug
        raise OnnxPruneError(f"{node_label(node)}: the target cannot be rewritten at surgery ({exc}); this is a "
                             f"bug in the attention rule, please report it with the model") from exc
    if is_shared(node.input[1], ctx):
        target = node.input[1]
        write_versions(target, lambda reader: _reader_edits(reader, target, pieces, ctx), ctx)
        return
    for edit in _piece_edits(node, pieces, ctx, offset):
        ctx.set_const_input(edit.node, edit.input_index, edit.value)


def _reader_edits(reader: NodeProto, target: str, pieces: list[TargetPiece], ctx: RewriteContext) -> list[PieceEdit]:
    """The edits one reader of a shared target needs: those of a Reshape/Expand whose output lost positions
    (its target entries are right-aligned with its output axes), none for any other reader."""
    y = reader.output[0] if reader.output else ""
    shape = ctx._lookup(y)
    if reader.op_type not in ("Reshape", "Expand") or len(reader.input) < 2 or reader.input[1] != target \
            or shape is None or not any(ctx.changed(y, a) for a in range(len(shape))):
        return []
    return _piece_edits(reader, pieces, ctx, len(shape) - sum(p.length for p in pieces))


def _piece_edits(node: NodeProto, pieces: list[TargetPiece], ctx: RewriteContext, offset: int) -> list[PieceEdit]:
    """The new constants the pieces of ``node``'s target need after the cut (see :func:`rewrite_target`)."""
    old, new = ctx.shape(node.output[0]), ctx.new_shape(node.output[0])
    edits: list[PieceEdit] = []
    inferred = 0
    for piece in pieces:
        if piece.values is None:
            if any(old[b] != new[b] for b in range(piece.start + offset, piece.start + offset + piece.length)):
                # the analysis proved this is the Reshape's only entry that can be -1 (check_target_entry)
                inferred += 1
                if inferred > 1 or node.op_type != "Reshape":
                    raise OnnxPruneError(f"{node_label(node)}: more than one runtime entry of its target changes; "
                                         f"this is a bug in the attention rule, please report it with the model")
                edits.append(PieceEdit(piece.node, piece.input_index, np.array([-1], dtype=np.int64)))
            continue
        values = piece.values.copy()
        for e in range(piece.start, piece.start + piece.length):
            b = e + offset
            if old[b] != new[b] and values[e - piece.start] > 1:
                values[e - piece.start] = new[b]
        if not np.array_equal(values, piece.values):
            original = ctx.const(piece.node.input[piece.input_index])
            log.debug("%s: target piece %s -> %s", node_label(node), piece.values.tolist(), values.tolist())
            edits.append(PieceEdit(piece.node, piece.input_index,
                                   values.reshape(original.shape).astype(original.dtype)))
    return edits
