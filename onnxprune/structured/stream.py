"""The residual stream's width as one channel group: the analysis options that let it be cut.

Why a separate set of rules: a LayerNormalization over the stream's axis computes its mean and variance
over every channel, so removing channels changes the function. The default analysis therefore blocks the
stream ("normalizes over axis 2"), which is right for exact pruning. Width pruning (``--mode width``)
accepts that change on purpose (the normalisation then runs over the kept channels, and the readers are
re-fitted on calibration data): these rules are passed as ``extra_rules=`` to
:func:`~onnxprune.structured.analysis.analyze` and never change the default analysis.

Exporters also read the stream's width at run time (torch's attention computes ``head_dim`` and reshape
targets from ``Shape`` of the stream). :func:`freeze_stream_shapes` is an exact rewrite that replaces such
reads of dimensions that do not depend on the input sizes by constants, and a reshape target's trailing
copy of the input's last dimension by ``-1``, so the stream can be cut without touching those computations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, numpy_helper

from onnxprune.core.ir import FLOAT_TYPES, GraphIndex, node_label
from onnxprune.core.shapefold import MAX_ELEMENTS, infer_shapes
from onnxprune.core.weights import copy_model_without_weights
from onnxprune.structured.analysis import DependencyGraph
from onnxprune.structured.axes import ChannelAxis, Coupling
from onnxprune.structured.rules.base import Blocked, OpRule, RewriteContext, RuleContext, is_output, which_input
from onnxprune.structured.rules.norm import LayerNormRule
from onnxprune.structured.rules.pool import ReduceRule, reduce_axes
from onnxprune.structured.rules.registry import RuleSpec
from onnxprune.structured.rules.repeat import ExpandRule
from onnxprune.structured.rules.shape import ReshapeRule

log = logging.getLogger(__name__)


def _norm_start(node: NodeProto, ctx: RuleContext) -> tuple[int, int]:
    rank = ctx.rank(node.input[0])
    start = ctx.int_attr(node, "axis", -1)
    return (start + rank if start < 0 else start), rank


class StreamLayerNormRule(LayerNormRule):
    """LayerNormalization over exactly the last axis may lose channels: it then normalizes over the kept
    ones (not exact), and its scale and bias are sliced with the stream."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        start, rank = _norm_start(node, ctx)
        last = rank - 1
        params = [i for i in (1, 2) if len(node.input) > i and node.input[i]]
        is_param = not is_output(node, slot) and 0 not in which_input(node, slot, ctx)
        if start != last or not (is_param or slot.axis == last):
            return super().couplings(node, slot, ctx)
        if any(len(ctx.shape(node.input[i])) != 1 for i in params):
            raise Blocked(f"{node_label(node)} has a scale/bias that is not one value per channel")
        if any(o for o in node.output[1:]):
            raise Blocked(f"{node_label(node)} outputs its Mean/InvStdDev, which the width cut would change")
        x = ctx.slot(node.input[0], last)
        result = [Coupling(x, ctx.slot(node.output[0], last))]
        result += [Coupling(x, ctx.slot(node.input[i], 0), role="param", input_index=i) for i in params]
        return result


def _trailing_minus_one(node: NodeProto, ctx: RuleContext) -> bool:
    """Whether a runtime reshape target is ``Concat(..., [-1])`` (its last entry copies what is left)."""
    concat = ctx.index.producer.get(node.input[1])
    if concat is None or concat.op_type != "Concat" or not concat.input:
        return False
    last = concat.input[-1]
    if not ctx.is_const(last):
        return False
    value = ctx.const(last).reshape(-1)
    others = [ctx.const(i).reshape(-1) for i in concat.input[:-1] if ctx.is_const(i)]
    return value.size == 1 and int(value[0]) == -1 and not any((o == -1).any() for o in others)


def _target_piece(node: NodeProto, ctx: RuleContext | RewriteContext, b: int) -> tuple[NodeProto, int] | None:
    """``(Concat, input index)`` of a runtime reshape target ``Concat`` of one-element pieces whose piece at
    position ``b`` is a constant equal to the output's size there; ``None`` otherwise."""
    concat = ctx.index.producer.get(node.input[1])
    if concat is None or concat.op_type != "Concat":
        return None
    pos = 0
    for k, piece in enumerate(concat.input):
        shape = ctx._lookup(piece) if piece else None
        if not shape or len(shape) != 1 or not isinstance(shape[0], int):
            return None
        if pos == b:
            value = ctx.index.const_value(piece)
            if shape[0] != 1 or value is None or int(value.reshape(-1)[0]) != ctx.shape(node.output[0])[b]:
                return None
            return concat, k
        pos += shape[0]
    return None


class StreamReshapeRule(ReshapeRule):
    """A Reshape with a runtime target that keeps the stream's axis: a target ending in ``-1`` (last axis), or
    a ``Concat`` target whose piece at an axis with the same leading dims is a constant (rewritten)."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        if node.op_type == "Reshape" and not ctx.is_const(node.input[1]) and slot.tensor in node.input[:1] + \
                node.output[:1]:
            x, y = node.input[0], node.output[0]
            sx, sy = ctx.shape(x), ctx.shape(y)
            a = slot.axis
            if _trailing_minus_one(node, ctx) and a == (len(sx) - 1 if slot.tensor == x else len(sy) - 1) \
                    and sx[-1] == sy[-1]:
                return [Coupling(ctx.slot(x, len(sx) - 1), ctx.slot(y, len(sy) - 1))]
            if a < min(len(sx), len(sy)) and sx[:a + 1] == sy[:a + 1] and _target_piece(node, ctx, a) is not None:
                return [Coupling(ctx.slot(x, a), ctx.slot(y, a))]
        return super().couplings(node, slot, ctx)

    def rewrite(self, node: NodeProto, ctx: RewriteContext) -> None:
        if node.op_type != "Reshape" or ctx.index.const_value(node.input[1]) is not None:
            super().rewrite(node, ctx)
            return
        y = node.output[0]
        old, new = ctx.shape(y), ctx.new_shape(y)
        changed = [b for b, (o, n) in enumerate(zip(old, new, strict=True)) if o != n]
        if any(b != len(old) - 1 and _target_piece(node, ctx, b) is None for b in changed):
            super().rewrite(node, ctx)  # the default reading's entry (MobileViT's unfold: B*C*h at run time -> -1)
            return
        for b, (o, n) in enumerate(zip(old, new, strict=True)):
            if o == n:
                continue
            found = _target_piece(node, ctx, b)
            if found is not None:  # else: the trailing -1 follows the cut by itself
                concat, k = found
                piece = ctx.const(concat.input[k])
                ctx.set_const_input(concat, k, np.full(piece.shape, n, dtype=piece.dtype))


class StreamGatherRule(OpRule):
    """Gather with constant indices along another axis (a class token picked, an embedding table read)
    keeps the stream's axis; the table itself, when constant, is cut with it."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        data, out = node.input[0], node.output[0]
        rank = ctx.rank(data)
        g = ctx.int_attr(node, "axis", 0)
        g = g + rank if g < 0 else g
        if slot.tensor not in (data, out) or (slot.tensor == data and slot.tensor == out):
            raise Blocked(f"{node_label(node)} reads '{slot.tensor}' as its indices")
        k = len(ctx.shape(node.input[1]))
        if slot.tensor == data:
            a = slot.axis
            if a == g:
                raise Blocked(f"{node_label(node)} gathers along axis {a} of '{data}'")
            b = a if a < g else a - 1 + k
        else:
            b = slot.axis
            if g <= b < g + k:
                raise Blocked(f"{node_label(node)} output axis {b} comes from its indices")
            a = b if b < g else b - k + 1
        role = "param" if ctx.is_const(data) else ""
        return [Coupling(ctx.slot(out, b), ctx.slot(data, a), role=role, input_index=0)]


class StreamExpandRule(ExpandRule):
    """Expand of a constant (a class token broadcast to the batch): an axis the target shape leaves at 1
    keeps the constant's channels, so the constant is cut with the stream. The target's value comes from the
    shape arithmetic folded at the analysis' input sizes.

    An Expand of an activation (grouped-query attention's ``repeat_kv``) is the default rule's: replacing
    the rule for the stream must not block the heads' groups that structured mode cuts."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        from onnxprune.core.shapefold import fold_values

        c, out = node.input[0], node.output[0]
        if not ctx.is_const(c):
            return super().couplings(node, slot, ctx)
        if slot.tensor not in (c, out):
            raise Blocked(f"{node_label(node)} expands '{slot.tensor}', which only a constant may be here")
        sc, so = ctx.shape(c), ctx.shape(out)
        shift = len(so) - len(sc)
        b = slot.axis if slot.tensor == out else slot.axis + shift
        a = b - shift
        target = fold_values(ctx.index.model, dict(ctx._shapes)).get(node.input[1])
        if a < 0 or sc[a] != so[b] or target is None:
            raise Blocked(f"{node_label(node)} broadcasts axis {b} of '{out}' from a size-1 axis, or its target "
                          f"shape is not known")
        t = target.reshape(-1)
        if int(t[b - (len(so) - t.size)]) != 1:
            raise Blocked(f"{node_label(node)} expands axis {b} to a fixed size; it cannot follow the cut")
        return [Coupling(ctx.slot(out, b), ctx.slot(c, a), role="param", input_index=0)]

    def rewrite(self, node: NodeProto, ctx: RewriteContext) -> None:
        if not ctx.index.is_constant(node.input[0]):
            super().rewrite(node, ctx)  # a constant's target keeps 1 on the stream's axis: nothing to edit


class StreamMeanRule(ReduceRule):
    """``ReduceMean`` over exactly the last axis with ``keepdims=1``: the statistic of an RMSNorm (Llama's
    ``x * rsqrt(mean(x^2) + eps)``) or of a LayerNorm written out in primitives. In width mode it averages
    over the kept channels (not exact, like :class:`StreamLayerNormRule`); its output has one entry on that
    axis and broadcasts back, so the cut channels do not flow through it."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        rank = ctx.rank(node.input[0])
        on_last = (not is_output(node, slot) and 0 in which_input(node, slot, ctx) and slot.axis == rank - 1)
        if on_last and reduce_axes(node, ctx, rank) == [rank - 1] and ctx.int_attr(node, "keepdims", 1):
            return []
        return super().couplings(node, slot, ctx)


def stream_rules() -> tuple[RuleSpec, ...]:
    """The ``extra_rules=`` of width pruning (see the module docstring); onnxruntime's fused norms too
    (:mod:`onnxprune.structured.fused_stream`)."""
    from onnxprune.structured.fused_stream import fused_stream_rules

    return (RuleSpec("LayerNormalization", StreamLayerNormRule(), since=17),
            RuleSpec("ReduceMean", StreamMeanRule()),
            RuleSpec("Reshape", StreamReshapeRule()), RuleSpec("Gather", StreamGatherRule()),
            RuleSpec("Expand", StreamExpandRule())) + fused_stream_rules()


# -- exact rewrite: static reads of the stream's width -------------------------------------------------
def _static_dims(model: ModelProto) -> dict[str, tuple]:
    """Shapes where a dim is an int only if it is the same at two different input sizes."""
    a, b = infer_shapes(model, default_dim=2), infer_shapes(model, default_dim=3)
    out: dict[str, tuple] = {}
    for name, sa in a.items():
        sb = b.get(name)
        if sa is None or sb is None or len(sa) != len(sb):
            continue
        out[name] = tuple(x if isinstance(x, int) and x == y else None for x, y in zip(sa, sb, strict=True))
    return out


def _remove_dead(model: ModelProto) -> None:
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input} | outputs
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name not in used]):
        del graph.initializer[i]  # by position: extending a kept list would copy every weight


def _static_read(node: NodeProto, idx: GraphIndex, sx: tuple) -> np.ndarray | None:
    """The value a ``Gather`` (axis 0) or ``Slice`` (axis 0, step 1) of ``Shape(x)`` reads, when every
    entry it reads is fixed; ``None`` otherwise."""
    consts = [idx.const_value(i) if i else None for i in node.input[1:]]
    if any(c is None for c in consts[:2]):
        return None
    if node.op_type == "Gather":
        if int(next((a.i for a in node.attribute if a.name == "axis"), 0)) != 0:
            return None
        k = consts[0]
        assert k is not None
        picked = [sx[int(i)] for i in k.reshape(-1)]
        shape: tuple[int, ...] = k.shape
    elif node.op_type == "Slice" and not node.attribute:
        axes, steps = (consts[i] if len(consts) > i else None for i in (2, 3))
        if (axes is not None and int(axes.reshape(-1)[0]) not in (0, -1)) or (
                steps is not None and int(steps.reshape(-1)[0]) != 1):
            return None
        start, end = (int(c.reshape(-1)[0]) for c in consts[:2] if c is not None)
        picked = list(sx[slice(start, end)])
        shape = (len(picked),)
    else:
        return None
    if any(p is None for p in picked):
        return None
    return np.asarray(picked, dtype=np.int64).reshape(shape)


def _expand_targets(idx: GraphIndex) -> set[str]:
    """Tensors an ``Expand``'s target shape is computed from.

    Why they stay run-time reads: grouped-query attention's ``repeat_kv`` reads the number of key/value heads
    back from the shape into its Expand target, and the head rules prove such a read follows a cut
    (:mod:`onnxprune.structured.shape_reads`); frozen into a constant, it would block the heads' groups in the
    model width mode analyses and returns. A class token's Expand target is read at the analysis' sizes by
    :class:`StreamExpandRule` either way."""
    return idx.ancestors((n.input[1] for n in idx.model.graph.node if n.op_type == "Expand" and len(n.input) > 1),
                         through_shape=False)


@dataclass(frozen=True)
class FrozenShapes:
    """What :func:`freeze_stream_shapes` did: the model and the counts of each rewrite."""

    model: ModelProto
    constants: int
    trailing: int
    #: initializers copied without their data (``empty_weights=True``); fill each before using the model
    empty: frozenset[str] = frozenset()
    #: graph outputs that are the stream, kept at full width by an appended projection (``(output, node,
    #: width)``, :mod:`onnxprune.structured.stream_outputs`); set by the width mode's preparation
    projections: tuple[tuple[str, str, int], ...] = ()
    #: initializers stored transposed for a tied LM head (:mod:`onnxprune.structured.untie`)
    untied: tuple[str, ...] = ()
    #: ``(head node, table)`` for each MatMul that read a table transposed (:mod:`onnxprune.structured.retie`)
    untied_heads: tuple[tuple[str, str], ...] = ()


def freeze_stream_shapes(model: ModelProto, *, empty_weights: bool = False) -> FrozenShapes:
    """Exact rewrite: ``Gather(Shape(x), k)`` of dimensions fixed at every input size become constants, and a
    runtime reshape target ``Concat(..., [d])`` whose ``d`` is the reshaped tensor's fixed last dimension
    (kept as the output's last) ends in ``-1`` instead. The input is not modified.

    ``empty_weights``: copy float initializers of more than ``MAX_ELEMENTS`` values without their data
    (none of them is read here; their names are in ``empty``), for a caller that rewrites most of them and
    fills the rest once (:func:`~onnxprune.core.weights.copy_model_without_weights` says why).
    """
    empty: frozenset[str] = frozenset()
    if empty_weights:
        empty = frozenset(t.name for t in model.graph.initializer
                          if t.data_type in FLOAT_TYPES and int(np.prod(t.dims)) > MAX_ELEMENTS)
        out = copy_model_without_weights(model, empty)
    else:
        out = ModelProto()
        out.CopyFrom(model)
    dims = _static_dims(out)
    idx = GraphIndex(out)
    followed = _expand_targets(idx)
    frozen: dict[str, np.ndarray] = {}
    for node in list(out.graph.node):
        shape_node = idx.producer.get(node.input[0]) if node.input else None
        if shape_node is None or shape_node.op_type != "Shape" or shape_node.attribute or node.output[0] in followed:
            continue
        sx = dims.get(shape_node.input[0])
        value = _static_read(node, idx, sx) if sx is not None else None
        if value is None:
            continue
        out.graph.node.remove(node)
        out.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        frozen[node.output[0]] = value
    idx = GraphIndex(out)
    trailing = 0
    for node in out.graph.node:
        if node.op_type != "Reshape" or idx.is_constant(node.input[1]):
            continue
        concat = idx.producer.get(node.input[1])
        if concat is None or concat.op_type != "Concat" or len(idx.consumers.get(concat.output[0], [])) != 1:
            continue
        last = concat.input[-1]
        unsq = idx.producer.get(last)
        src = unsq.input[0] if unsq is not None and unsq.op_type == "Unsqueeze" else last
        if src not in frozen or frozen[src].size != 1:
            continue
        sx, sy = dims.get(node.input[0]), dims.get(node.output[0])
        d = int(frozen[src].reshape(-1)[0])
        if not sx or not sy or sx[-1] != d or sy[-1] != d:
            continue
        if any((v == -1).any() for v in (idx.const_value(i) for i in concat.input[:-1]) if v is not None):
            continue
        name = idx.unique_name(f"{node.name or node.output[0]}_keep_last")
        out.graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), name))
        concat.input[len(concat.input) - 1] = name
        trailing += 1
    _remove_dead(out)
    log.info("froze %d static shape reads and %d reshape targets", len(frozen), trailing)
    return FrozenShapes(out, len(frozen), trailing, empty)


# -- the stream groups ------------------------------------------------------------------------------------
def stream_group_ids(model: ModelProto, dg: DependencyGraph) -> list[int]:
    """Groups (of an analysis with :func:`stream_rules`) that hold the last axis a LayerNormalization
    normalizes over, or a ``ReduceMean`` over the last axis takes its statistic from (RMSNorm, a LayerNorm
    written out), or a fused norm of onnxruntime normalizes: the residual streams (one per ConvNeXt stage, one
    for a plain transformer)."""
    from onnxprune.structured.fused_stream import FUSED_NORMS, stream_tensor

    ids: set[int] = set()
    for node in model.graph.node:
        if node.op_type not in ("LayerNormalization", "ReduceMean") + FUSED_NORMS:
            continue
        x = stream_tensor(node) if node.op_type in FUSED_NORMS else node.input[0]
        shape = dg.shapes.get(x)
        if not shape:
            continue
        ids.update(dg.group_of(ChannelAxis(x, len(shape) - 1)))
    return sorted(ids)
