"""Rotating the residual stream (SliceGPT's computational invariance), for pre-norm models.

Why it is exact: with the LayerNorms' scale and shift folded into their readers
(:mod:`onnxprune.structured.lnfold`) and every writer's output centred (so the stream's mean over its
channels is zero), each LayerNorm computes ``x / sqrt(mean(x²) + eps)``, an RMSNorm, which commutes with
any orthogonal ``Q``: ``RMS(x Q) = RMS(x) Q``. Multiplying every writer's output axis (weights, biases,
positional tables, class tokens) by ``Q`` and every reader's input axis by ``Qᵀ`` then leaves the outputs
unchanged. In a basis ordered by variance (the PCA of the stream, :mod:`onnxprune.recovery.slicegpt`), the
last directions can be sliced away with little loss.

Where it is impossible: post-norm models (the normalised output feeds the residual stream, so centring the
writers changes what readers see), LayerNorms whose scale/shift cannot be folded, and streams that pass
through anything but linear ops (a per-channel scale, a nonlinearity, a depthwise convolution: ConvNeXt).
These raise :class:`~onnxprune.core.errors.UnsupportedModelError` naming the reason; plain width pruning
(``--mode width``) still applies to them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from onnxprune.core.errors import UnsupportedModelError
from onnxprune.core.io import release_memory
from onnxprune.core.ir import GraphIndex, attr, drop_unused_initializers, node_label
from onnxprune.core.weights import copy_model_without_weights, little_endian_bytes
from onnxprune.structured.analysis import ChannelGroup, DependencyGraph, analyze
from onnxprune.structured.axes import Identity
from onnxprune.structured.fused_stream import FUSED_NORMS, rotation_refusal
from onnxprune.structured.lnfold import fold_layernorm_affine
from onnxprune.structured.rmsnorm import Casts, RmsNorm, bypass_identity_casts, fold_rms_scales, reduced_axes
from onnxprune.structured.stream import freeze_stream_shapes, stream_group_ids, stream_rules

log = logging.getLogger(__name__)

#: Ops a rotated stream may pass through: linear in the stream, and not per channel.
LINEAR_PASS = ("Add", "Sub", "Transpose", "Reshape", "Concat", "Gather", "ReduceMean", "Identity", "Dropout",
               "Flatten", "Squeeze", "Unsqueeze", "Expand", "MatMul", "Gemm", "Conv", "LayerNormalization")


@dataclass(frozen=True)
class Prepared:
    """A model ready to rotate: LayerNorm affines folded, writers centred (still exact, LayerNorms kept).

    Attributes:
        model: the rewritten model.
        dg: its analysis with the stream rules.
        group: the stream group id.
        width: the stream's width.
        norms: names of the stream's LayerNorm nodes (they become RMSNorms).
        stream: the stream's tensors before the norms (whose PCA gives Q).
    """

    model: ModelProto
    dg: DependencyGraph
    group: int
    width: int
    norms: tuple[str, ...]
    stream: tuple[str, ...]


def _along(value: np.ndarray, axis: int, q: np.ndarray) -> np.ndarray:
    """``value`` with its ``axis`` multiplied by ``q`` (``new[.., j, ..] = Σ_i value[.., i, ..] q[i, j]``)."""
    moved = np.moveaxis(value.astype(np.float64), axis, -1) @ q
    return np.moveaxis(moved, -1, axis).astype(value.dtype)


def _set(idx: GraphIndex, name: str, value: np.ndarray) -> None:
    tensor = idx.initializers.get(name)
    if tensor is None:
        raise UnsupportedModelError(f"stream constant '{name}' is not an initializer; it cannot be rotated")
    tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))


#: Folds what freezing made constant, in a copy made without the big weights' data: ``(model, source) ->
#: model``, with ``source`` the tensors holding that data (read-only). Passed in: evaluating a constant
#: subgraph needs onnxruntime, which ``structured`` does not import.
ShapeFold = Callable[[ModelProto, Mapping[str, TensorProto]], ModelProto]


def prepare_rotation(model: ModelProto, *, fold: ShapeFold | None = None) -> Prepared:
    """Fold, freeze and centre a pre-norm model's stream (exact); raise where rotation is impossible.

    ``fold``: run on the frozen copy before anything else (the integer pieces computed from a frozen width
    read become constants the width rules rewrite, :func:`~onnxprune.recovery.width.frozen_stream`). Given
    here rather than applied by the caller first, so that the model is never copied whole: the frozen and
    folded copies hold no weight data (a frozen, folded copy with its weights was one more model in memory
    next to the input and this one).

    Raises:
        UnsupportedModelError: no single stream, a LayerNorm that cannot be folded (post-norm), an op that is
            not linear in the stream, or a reader that sees the stream before a norm.
    """
    # The frozen copy holds no big weights yet: the fold reads them from the input and writes each folded
    # one once, then the others are filled once (a copy then rewritten would hold both versions).
    frozen = freeze_stream_shapes(model, empty_weights=True)
    source = {t.name: t for t in model.graph.initializer if t.name in frozen.empty}
    if fold is not None:
        # Folding can make more reads static (a Slice of a Shape whose bounds were just folded): freeze
        # again, as freezing the folded model with its weights did. Both copies hold no weight data.
        folded = fold(frozen.model, source)
        with_data = {t.name: t for t in folded.graph.initializer if t.name not in frozen.empty}
        frozen = freeze_stream_shapes(folded, empty_weights=True)
        # big weights the fold wrote with their data (a tied table stored transposed): the copy above dropped
        # their data as it dropped the input's, so they are read from the fold's model like those
        source.update({name: with_data[name] for name in frozen.empty if name in with_data})
        del with_data
    casts = bypass_identity_casts(frozen.model)  # exact: the frozen copy is ours
    rms = fold_rms_scales(frozen.model, source=source)
    fold_ln = fold_layernorm_affine(frozen.model, copy=False, source=source)
    del frozen
    out = fold_ln.model
    dg = analyze(out, extra_rules=stream_rules())  # structure only: reads no big float values
    ids = [g for g in stream_group_ids(out, dg) if dg.groups[g].prunable]
    if len(ids) != 1:
        raise UnsupportedModelError(f"rotation needs exactly one prunable residual stream, found {len(ids)}")
    group = dg.groups[ids[0]]
    idx = GraphIndex(out)
    by_name = {n.name: n for n in out.graph.node}
    members = {s.tensor for s in group.members}
    fused = [by_name[n] for n in group.nodes if n in by_name and by_name[n].op_type in FUSED_NORMS]
    if fused:
        raise UnsupportedModelError(rotation_refusal(fused[0]))
    norms = [n for n in out.graph.node if n.op_type == "LayerNormalization" and n.input[0] in members]
    rms_norms = [r for r in rms.norms if r.x in members]
    unfolded = [n.name for n in norms if any(n.name in k for k in fold_ln.skipped)]
    if unfolded:
        why = next(v for k, v in fold_ln.skipped.items() if unfolded[0] in k)
        raise UnsupportedModelError(f"LayerNorm '{unfolded[0]}' cannot be folded ({why}); rotation needs each "
                                    f"norm read by linear layers only, as in a pre-norm model (plain width pruning "
                                    f"applies)")
    for scale in (r.scale for r in rms_norms if r.scale in rms.skipped):
        raise UnsupportedModelError(f"the RMSNorm scale '{scale}' (Mul) cannot be folded ({rms.skipped[scale]}); "
                                    f"rotation is impossible (plain width pruning applies)")
    if norms and rms_norms:
        raise UnsupportedModelError(f"the stream is normalised by LayerNorms ('{norms[0].name}') and RMSNorms "
                                    f"('{rms_norms[0].mean}'); one rotation cannot keep both exact")
    check_linear(group, idx, dg.shapes, casts, rms_norms)
    # Tensors after a norm: readers must see only those (centring changes what comes before). RMSNorms need
    # no centring (they have no mean to keep at zero): nothing to check or centre then.
    post: set[str] = set()
    todo = [n.output[0] for n in norms] if norms else []
    while todo:
        t = todo.pop()
        if t in post:
            continue
        post.add(t)
        for user in idx.consumers.get(t, []):
            if user.op_type not in ("MatMul", "Gemm", "Conv"):
                todo.extend(o for o in user.output if o in members)
    for cut in group.sinks if norms else ():
        if cut.activation is not None and cut.activation.tensor not in post:
            raise UnsupportedModelError(f"'{cut.node}' reads the stream before a norm; centring it would change "
                                        f"its output, so rotation is impossible (plain width pruning applies)")
    norm_params = {i for n in norms for i in n.input[1:]}
    done: set[tuple[str, int]] = set()
    reads = GraphIndex(out)  # values: those still without data are read from the input (read-only)
    reads.initializers.update({n: t for n, t in source.items() if n in reads.initializers})
    for cut in group.cuts if norms else ():
        if cut.role == "sink" or cut.tensor in norm_params or (cut.tensor, cut.axis) in done:
            continue
        node = by_name.get(cut.node) or idx.producer.get(cut.node)
        if node is not None and any(o in post for o in node.output):
            continue  # after a norm: rotated, not centred
        value = reads.const_value(cut.tensor)
        if value is None:
            raise UnsupportedModelError(f"stream constant '{cut.tensor}' is computed at run time")
        _set(idx, cut.tensor, value - value.astype(np.float64).mean(axis=cut.axis, keepdims=True).astype(value.dtype))
        del value
        release_memory()  # the writer's temporaries, before the next writer's
        reads.initializers[cut.tensor] = idx.initializers[cut.tensor]  # centred along a second axis: read it
        done.add((cut.tensor, cut.axis))
    written = {name for name, _ in done}
    for tensor in out.graph.initializer:  # the rest, once each
        if tensor.name in source and tensor.name not in written:
            tensor.CopyFrom(source[tensor.name])
    dg = analyze(out, extra_rules=stream_rules())  # the same structure; constants changed
    stream = tuple(dict.fromkeys([n.input[0] for n in norms] + [r.x for r in rms_norms]))
    names = tuple(n.name for n in norms) + tuple(r.mean for r in rms_norms)
    return Prepared(out, dg, ids[0], group.size, names, stream)


def check_linear(group: ChannelGroup, idx: GraphIndex,
                 shapes: Mapping[str, tuple], casts: Casts, rms_norms: list[RmsNorm]) -> None:
    """Raise unless every node the stream passes through is linear in it and not per channel, or is part of
    a written-out RMSNorm (invariant under a rotation as a whole), naming the first that is not and why."""
    inside = {name for r in rms_norms for name in r.nodes}
    axis_of = {s.tensor: s.axis for s in group.members}
    on_stream = set(group.nodes)
    for node in idx.model.graph.node:  # graph order: the first node on the stream that is not linear is named
        name = node.name
        if name not in on_stream or name in inside:
            continue
        label = node_label(node)
        if node.op_type == "Cast" and name in casts.kept:
            raise UnsupportedModelError(f"the stream passes through {label}, a cast from {casts.kept[name]}, which "
                                        f"is not linear in it; rotation is impossible (plain width pruning applies)")
        if node.op_type not in LINEAR_PASS:
            raise UnsupportedModelError(f"the stream passes through {label}, which is not linear in it; rotation "
                                        f"is impossible (plain width pruning applies)")
        x = node.input[0] if node.input else ""
        if node.op_type == "ReduceMean" and x in axis_of:
            axes = reduced_axes(node, idx, len(shapes.get(x) or ()))
            if axes is None or axis_of[x] in axes:
                raise UnsupportedModelError(f"{label} averages the stream over its channels, which a rotation "
                                            f"changes; rotation is impossible (plain width pruning applies)")
    if any(not isinstance(m, Identity) for m in group.members.values()):
        raise UnsupportedModelError("the stream is reshaped into another axis; rotation is impossible")


def rotation_axes(prepared: Prepared) -> dict[str, list[int]]:
    """The stream constants :func:`rotate` rewrites and the axes of each; raise where one cannot be rotated.

    Needs no ``Q``: a caller checks it before computing one, and may then drop the model it prepared from.
    """
    source = GraphIndex(prepared.model)
    by_name = {n.name: n for n in prepared.model.graph.node}
    norm_params = {i for name in prepared.norms for i in by_name[name].input[1:]}
    axes: dict[str, list[int]] = {}
    for cut in prepared.dg.groups[prepared.group].cuts:
        if cut.tensor in norm_params or cut.axis in axes.get(cut.tensor, []):
            continue
        if cut.tensor not in source.initializers:
            raise UnsupportedModelError(f"stream constant '{cut.tensor}' is not an initializer; it cannot be "
                                        f"rotated")
        axes.setdefault(cut.tensor, []).append(cut.axis)
    return axes


def rotate(prepared: Prepared, q: np.ndarray, *, values: GraphIndex | None = None) -> ModelProto:
    """The prepared model with every stream constant multiplied by ``q`` along its stream axis (LayerNorms
    kept: call :func:`to_rms` for the exact model).

    The copy is made without the rotated constants and each is written once (a tensor rotated along two
    axes is rotated along both first): rewriting a copied tensor would keep both versions in memory.
    ``values``: where the constants to rotate are read (an index of the prepared model saved with external
    data, whose ``data_dir`` is set), for a ``prepared.model`` that holds no data for them (a caller that
    keeps the prepared weights on disk only, one tensor in memory at a time).
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (prepared.width, prepared.width) or not np.allclose(q.T @ q, np.eye(prepared.width), atol=1e-6):
        raise UnsupportedModelError(f"Q must be an orthogonal {prepared.width}x{prepared.width} matrix")
    source = values if values is not None else GraphIndex(prepared.model)
    axes = rotation_axes(prepared)
    out = copy_model_without_weights(prepared.model, axes)
    idx = GraphIndex(out)
    for name, along in axes.items():
        value = source.const_value(name)
        assert value is not None  # prepare_rotation checked every constant
        for axis in along:
            value = _along(value, axis, q)
        idx.initializers[name].raw_data = little_endian_bytes(value)
        del value
        release_memory()  # the tensor's temporaries (a few times its size), before the next one's
    return out


def _norm_elem_type(idx: GraphIndex, node: NodeProto) -> int:
    """The float type a LayerNorm works in: that of its scale (the stream's own type), float32 if unknown."""
    scale = idx.initializers.get(node.input[1]) if len(node.input) > 1 else None
    return int(scale.data_type) if scale is not None else TensorProto.FLOAT


def to_rms(model: ModelProto, norms: tuple[str, ...], width: int, *, inplace: bool = False) -> ModelProto:
    """Replace each named LayerNorm by ``x / sqrt(Σx² / width + eps)`` (its scale and shift must be unit and
    zero), and each named ``ReduceMean`` (a written-out RMSNorm's mean of squares,
    :mod:`onnxprune.structured.rmsnorm`) by ``Σ / width``. With ``width`` the original stream width, a sliced
    stream keeps the original scale.

    ``inplace``: edit ``model`` itself and return it (a caller that no longer needs the LayerNorm version
    saves a copy of the model)."""
    if inplace:
        out = model
    else:
        out = ModelProto()
        out.CopyFrom(model)
    idx = GraphIndex(out)
    graph = out.graph
    for name in norms:
        pos, node = next((i, n) for i, n in enumerate(graph.node) if n.name == name)
        if node.op_type == "ReduceMean":
            _sum_over_width(idx, pos, node, width)
            continue
        eps = float(attr(node, "epsilon", idx.opset, 1e-5))  # type: ignore[arg-type]
        x, y = node.input[0], node.output[0]
        p = idx.unique_name(f"{name}_rms")
        axes, inv, e = f"{p}_axes", f"{p}_inv_width", f"{p}_eps"
        graph.initializer.extend([
            numpy_helper.from_array(np.array([-1], dtype=np.int64), axes),
            numpy_helper.from_array(np.array(1.0 / width, dtype=np.float32), inv),
            numpy_helper.from_array(np.array(eps, dtype=np.float32), e)])
        # A half-precision stream is normalised in float32, as onnxruntime's LayerNormalization does: a sum
        # of squares over the width overflows float16, and float32 constants cannot meet a float16 tensor.
        elem = _norm_elem_type(idx, node)
        nodes = []
        if elem != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [x], [f"{p}_x32"], name=f"{p}_x32", to=TensorProto.FLOAT))
            x = f"{p}_x32"
        normed = y if elem == TensorProto.FLOAT else f"{p}_y32"
        nodes += [
            helper.make_node("Mul", [x, x], [f"{p}_sq"], name=f"{p}_sq"),
            helper.make_node("ReduceSum", [f"{p}_sq", axes], [f"{p}_sum"], name=f"{p}_sum", keepdims=1),
            helper.make_node("Mul", [f"{p}_sum", inv], [f"{p}_mean"], name=f"{p}_mean"),
            helper.make_node("Add", [f"{p}_mean", e], [f"{p}_var"], name=f"{p}_var"),
            helper.make_node("Sqrt", [f"{p}_var"], [f"{p}_std"], name=f"{p}_std"),
            helper.make_node("Div", [x, f"{p}_std"], [normed], name=f"{p}_div"),
        ]
        if elem != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [normed], [y], name=f"{p}_y", to=elem))
        graph.node.remove(node)
        for k, n in enumerate(nodes):
            graph.node.insert(pos + k, n)
    drop_unused_initializers(graph)
    return out


def _sum_over_width(idx: GraphIndex, pos: int, node: NodeProto, width: int) -> None:
    """Replace the ``ReduceMean`` over the last axis at ``pos`` by ``ReduceSum(...) / width`` (same output),
    ``1 / width`` in the type of the norm's ``eps`` (the statistic's type: float32 behind Llama's Casts)."""
    graph = idx.graph
    p = idx.unique_name(f"{node.name}_rms")
    inv = f"{p}_inv_width"
    other = [i for n in idx.consumers.get(node.output[0], []) for i in n.input if i != node.output[0]]
    eps = idx.const_value(other[0]) if other else None
    dtype = eps.dtype if eps is not None and eps.dtype.kind == "f" else np.dtype(np.float32)
    graph.initializer.append(numpy_helper.from_array(np.array(1.0 / width, dtype=dtype), inv))
    if idx.opset >= 13:
        axes = f"{p}_axes"
        graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), axes))
        total = helper.make_node("ReduceSum", [node.input[0], axes], [f"{p}_sum"], name=f"{p}_sum", keepdims=1)
    else:
        total = helper.make_node("ReduceSum", [node.input[0]], [f"{p}_sum"], name=f"{p}_sum", axes=[-1], keepdims=1)
    scaled = helper.make_node("Mul", [f"{p}_sum", inv], [node.output[0]], name=f"{p}_mean")
    graph.node.remove(node)
    graph.node.insert(pos, total)
    graph.node.insert(pos + 1, scaled)
