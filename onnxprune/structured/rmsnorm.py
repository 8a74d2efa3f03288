"""What the stream rotation sees through in exported language models: same-type Casts and written-out RMSNorms.

Why: torch exports Llama's RMSNorm in primitives, with a Cast to float32 on each side:
``y = γ * Cast(x * 1/sqrt(mean(Pow(Cast(x), 2), -1) + eps))``. A rotation of the stream by an orthogonal ``Q``
keeps ``‖xQ‖ = ‖x‖``, so the statistic (a mean of squares over the channel axis) does not change, and
``x * r`` with one ``r`` per token commutes with ``Q``; a Cast to the type its input already has is the
identity. Only ``γ`` (one scale per channel) does not commute: it is folded into the linear layers that read
the norm (:mod:`onnxprune.structured.lnfold`), as a LayerNorm's scale is. An RMSNorm has no mean to keep at
zero, so a model whose stream norms are all RMSNorms is rotated without centring its writers.

A Cast to another type (float16 to float32) is not the identity of the stream's values and stays a
refusal, named with both types. Each rewrite here is exact: the input model's outputs are unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper

from onnxprune.core.ir import GraphIndex, attr, attr_ints, collect_types, replace_input, shape_skeleton
from onnxprune.core.shapefold import infer_shapes
from onnxprune.structured.lnfold import NotFoldable, fold_into, linear_readers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RmsNorm:
    """One RMSNorm written out over the last axis of ``x``.

    Attributes:
        x: the normalised tensor.
        mean: the ``ReduceMean`` node of the squares (:func:`~onnxprune.structured.rotate.to_rms` turns it
            into a sum over the original width, so a sliced stream keeps its scale).
        nodes: the nodes that read the stream inside the norm (the square, the mean, the ``x * r``): not
            linear one by one, invariant under a rotation together.
        out: the normalised output before the scale.
        scale: the ``Mul`` by a constant ``γ`` behind ``out`` (``""``: none).
    """

    x: str
    mean: str
    nodes: tuple[str, ...]
    out: str
    scale: str = ""


@dataclass(frozen=True)
class Casts:
    """Same-type Casts bypassed (their names) and the others, each with what it converts (``from → to``)."""

    bypassed: tuple[str, ...] = ()
    kept: dict[str, str] = field(default_factory=dict)


def _type_name(elem: int) -> str:
    return TensorProto.DataType.Name(elem).lower() if elem else "an unknown type"


def bypass_identity_casts(model: ModelProto) -> Casts:
    """Remove every Cast to the element type its input already has (in place: the caller owns ``model``); its
    readers read the input instead. A Cast that writes a graph output becomes an ``Identity`` (the output's
    name stays). Element types are inferred on a weightless skeleton; a Cast whose input type is not known
    is kept."""
    try:
        types = collect_types(onnx.shape_inference.infer_shapes(shape_skeleton(model), strict_mode=False))
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        log.info("element types not inferred (%s): no Cast bypassed", str(exc).splitlines()[0])
        types = {}
    outputs = {o.name for o in model.graph.output}
    bypassed: list[str] = []
    kept: dict[str, str] = {}
    for node in [n for n in model.graph.node if n.op_type == "Cast" and n.domain in ("", "ai.onnx")]:
        src, to = types.get(node.input[0], 0), int(attr(node, "to"))  # type: ignore[call-overload]
        if src != to:
            kept[node.name or node.output[0]] = f"{_type_name(src)} to {_type_name(to)}"
            continue
        bypassed.append(node.name or node.output[0])
        if node.output[0] in outputs:
            pos = next(k for k, n in enumerate(model.graph.node) if n is node)
            model.graph.node[pos].CopyFrom(helper.make_node("Identity", [node.input[0]], [node.output[0]],
                                                            name=node.name))
            continue
        replace_input(model.graph, node.output[0], node.input[0])
        model.graph.node.remove(node)
    if bypassed:
        log.info("bypassed %d Cast(s) to the type their input already has", len(bypassed))
    return Casts(tuple(bypassed), kept)


def reduced_axes(node: NodeProto, idx: GraphIndex, rank: int) -> list[int] | None:
    """A reduction's axes, non-negative and sorted (all axes when none are given); ``None`` when they are
    computed at run time."""
    if len(node.input) > 1 and node.input[1]:
        value = idx.const_value(node.input[1])
        if value is None:
            return None
        axes = [int(a) for a in value.reshape(-1)]
    else:
        axes = attr_ints(node, "axes", idx.opset)
    if not axes:
        return [] if attr(node, "noop_with_empty_axes", idx.opset, 0) else list(range(rank))
    return sorted(a + rank if a < 0 else a for a in axes)


def _single_user(idx: GraphIndex, tensor: str, ops: tuple[str, ...]) -> NodeProto | None:
    users = idx.consumers.get(tensor, [])
    if len(users) != 1 or users[0].op_type not in ops or tensor in idx.graph_outputs:
        return None
    return users[0]


def _const_equals(idx: GraphIndex, name: str, value: float) -> bool:
    c = idx.const_value(name)
    return c is not None and c.size == 1 and float(c.reshape(-1)[0]) == value


def _other(node: NodeProto, name: str) -> str | None:
    """The other input of a two-input node one of whose inputs is ``name``."""
    if len(node.input) != 2 or name not in node.input:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def _match(idx: GraphIndex, mean: NodeProto, shapes: Mapping[str, tuple]) -> RmsNorm | None:
    """The RMSNorm whose statistic ``mean`` computes, or ``None``: ``Pow(x, 2)`` (or ``x * x``) averaged over
    the last axis with ``keepdims``, plus a constant, ``Sqrt``, then ``x * Reciprocal``, ``x * Div(1, .)`` or
    ``Div(x, .)``; each intermediate read once."""
    rank = len(shapes.get(mean.input[0]) or ())
    if not rank or reduced_axes(mean, idx, rank) != [rank - 1] or not attr(mean, "keepdims", idx.opset, 1):
        return None
    square = idx.producer.get(mean.input[0])
    if square is None or _single_user(idx, square.output[0], ("ReduceMean",)) is None:
        return None
    x = square.input[0]
    if not ((square.op_type == "Pow" and _const_equals(idx, square.input[1], 2.0))
            or (square.op_type == "Mul" and list(square.input) == [x, x])):
        return None
    add = _single_user(idx, mean.output[0], ("Add",))
    eps = _other(add, mean.output[0]) if add is not None else None
    sqrt = _single_user(idx, add.output[0], ("Sqrt",)) if add is not None and eps is not None else None
    if eps is None or sqrt is None or idx.const_value(eps) is None or idx.const_value(eps).size != 1:  # type: ignore[union-attr]
        return None
    step = _single_user(idx, sqrt.output[0], ("Reciprocal", "Div"))
    if step is None:
        return None
    if step.op_type == "Div" and list(step.input) == [x, sqrt.output[0]]:
        scaled = step  # x / sqrt(...)
    else:
        if step.op_type == "Div" and not (step.input[1] == sqrt.output[0] and _const_equals(idx, step.input[0], 1.0)):
            return None
        scaled = _single_user(idx, step.output[0], ("Mul",))  # type: ignore[assignment]
        if scaled is None or _other(scaled, step.output[0]) != x:
            return None
    out = scaled.output[0]
    gamma = _single_user(idx, out, ("Mul",))
    scale = ""
    if gamma is not None:
        g = _other(gamma, out)
        value = idx.const_value(g) if g is not None else None
        shape = shapes.get(x) or ()
        if value is not None and value.size == shape[-1] == value.shape[-1] and value.ndim <= rank:
            scale = gamma.name or gamma.output[0]
    return RmsNorm(x, mean.name or mean.output[0], tuple(n.name or n.output[0] for n in (square, mean, scaled)),
                   out, scale)


def find_rms_norms(model: ModelProto, shapes: Mapping[str, tuple] | None = None) -> list[RmsNorm]:
    """Every RMSNorm written out over a last axis (see :func:`_match`), in graph order."""
    shapes = shapes if shapes is not None else infer_shapes(model)
    idx = GraphIndex(model)
    found = [_match(idx, n, shapes) for n in model.graph.node if n.op_type == "ReduceMean"]
    return [f for f in found if f is not None]


@dataclass(frozen=True)
class RmsFold:
    """The RMSNorms found, the scales folded (their ``Mul`` nodes' names), and why each other one was left
    alone (by the same name)."""

    norms: tuple[RmsNorm, ...]
    folded: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)


def fold_rms_scales(model: ModelProto, *, source: Mapping[str, TensorProto] | None = None) -> RmsFold:
    """Fold each written-out RMSNorm's ``γ`` into the linear layers that read it and remove its ``Mul``
    (in place: the caller owns ``model``; exact). ``source``: values of initializers ``model`` holds without
    data (read-only), as :func:`~onnxprune.structured.lnfold.fold_layernorm_affine` takes them."""
    shapes = infer_shapes(model)
    norms = find_rms_norms(model, shapes)
    folded: list[str] = []
    skipped: dict[str, str] = {}
    for norm in norms:
        if not norm.scale:
            continue
        idx = GraphIndex(model)
        if source:
            idx.initializers.update({n: t for n, t in source.items() if n in idx.initializers})
        mul = next(n for n in model.graph.node if (n.name or n.output[0]) == norm.scale)
        gamma = idx.const_value(_other(mul, norm.out))  # type: ignore[arg-type]
        assert gamma is not None  # _match checked it
        try:
            readers = linear_readers(idx, mul.output[0], dict(shapes))
        except NotFoldable as why:
            skipped[norm.scale] = str(why)
            continue
        g64 = gamma.astype(np.float64).reshape(-1)
        for reader, _axis in readers:
            fold_into(idx, reader, g64, None)
        replace_input(model.graph, mul.output[0], norm.out)
        model.graph.node.remove(mul)
        folded.append(norm.scale)
    for label, reason in skipped.items():
        log.info("RMSNorm scale %s not folded: %s", label, reason)
    return RmsFold(tuple(norms), tuple(folded), skipped)
