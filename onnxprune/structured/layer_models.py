"""Tiny models of one channel group's layers at a chosen width, for timing each width in isolation.

Why: MACs are not time. A convolution with 45 output channels can run slower than one with 48 (or than
the original 64) because CPU kernels block channels by 8 or 16. The only honest way to know which widths
are fast is to time them, and timing the whole model once per group and width costs far too much. So
each heavy layer the group cuts (its producers' output axis, its consumers' input axis) is rebuilt alone,
at the model's shapes, with that group's axes set to the candidate width and every other axis as it is.
The runtime layer times these models; this module only builds them (pure onnx, no onnxruntime).

Only the layers that dominate time are built (:data:`TIMED_OPS`); grouped convolutions other than
depthwise ones are skipped (their ``group`` attribute would need the analysis' grouped-conv rewrite).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper

from onnxprune.core.ir import attr
from onnxprune.structured.analysis import ChannelGroup, DependencyGraph

log = logging.getLogger(__name__)

#: Op types whose cost is timed per width; everything else is assumed to scale with the channels.
TIMED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_FLOAT_TYPES: dict[int, type] = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16,
                                 TensorProto.DOUBLE: np.float64}


@dataclass(frozen=True)
class LayerModel:
    """One layer rebuilt alone at one width of one group.

    Attributes:
        node: the layer's node name.
        width: the group's kept width it was built at.
        model: a one-node model; its inputs are fed at their declared static shapes.
        signature: a hash of everything timing depends on (op, attributes, shapes, dtype), so two layers
            of the same shape share one measurement (and one cache entry).
    """

    node: str
    width: int
    model: ModelProto
    signature: str


def _node_name(node: NodeProto) -> str:
    return node.name or (node.output[0] if node.output else "")


def _axis_sizes(group: ChannelGroup, width: int) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
    """Sizes, at ``width`` kept roots (the first ones), of every activation axis and constant axis of the group."""
    roots = np.arange(width, dtype=np.int64)
    acts = {(a.tensor, a.axis): int(m.forward(roots).size) for a, m in group.members.items()}
    consts = {(c.tensor, c.axis): int(c.positions(roots).size) for c in group.cuts}
    return acts, consts


def _shape_at(name: str, shape: tuple | None, sizes: Mapping[tuple[str, int], int]) -> list[int] | None:
    if shape is None or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
        return None
    return [sizes.get((name, i), int(d)) for i, d in enumerate(shape)]


def _one_layer(model: ModelProto, node: NodeProto, dg: DependencyGraph, shapes: Mapping[str, tuple],
               acts: Mapping[tuple[str, int], int], consts: Mapping[tuple[str, int], int],
               dtypes: Mapping[str, int]) -> ModelProto | None:
    """``node`` alone at the given axis sizes; ``None`` when a shape is unknown or the node cannot be rebuilt."""
    inputs, inits = [], []
    new_shapes: dict[str, list[int]] = {}
    elem = None
    rng = np.random.default_rng(0)
    for name in node.input:
        if not name:
            continue
        if name in dg.const_shapes:
            shape = _shape_at(name, tuple(dg.const_shapes[name]), consts)
            if shape is None:
                return None
            dtype = _FLOAT_TYPES.get(dtypes.get(name, TensorProto.FLOAT))
            if dtype is None:
                return None
            value: np.ndarray = rng.standard_normal(shape).astype(dtype)
            inits.append(helper.make_tensor(name, dtypes.get(name, TensorProto.FLOAT), shape,
                                            value.tobytes(), raw=True))
        else:
            shape = _shape_at(name, shapes.get(name), acts)
            elem = dtypes.get(name, TensorProto.FLOAT)
            if shape is None or elem not in _FLOAT_TYPES:
                return None
            inputs.append(helper.make_tensor_value_info(name, elem, shape))
        new_shapes[name] = shape
    if not inputs or any(name and name not in dg.const_shapes for name in node.input[1:weight_inputs(node)]):
        return None  # a weight computed at run time (behind DequantizeLinear, say) is not rebuilt alone
    copy = NodeProto()
    copy.CopyFrom(node)
    if node.op_type in ("Conv", "ConvTranspose"):
        groups = int(attr(node, "group", default=1) or 1)  # type: ignore[call-overload]
        if groups > 1:
            data = new_shapes[node.input[0]]
            old = shapes[node.input[0]]
            if groups != old[1]:  # grouped but not depthwise: the width rewrite is the analysis' business
                return None
            for a in copy.attribute:
                if a.name == "group":
                    a.i = data[1]
    outputs = [helper.make_tensor_value_info(o, elem or TensorProto.FLOAT, None) for o in node.output if o]
    graph = helper.make_graph([copy], "layer", inputs, outputs, initializer=inits)
    opsets = [helper.make_opsetid(o.domain, o.version) for o in model.opset_import]
    out = helper.make_model(graph, opset_imports=opsets)
    out.ir_version = model.ir_version
    return out


def weight_inputs(node: NodeProto) -> int:
    """How many leading inputs of a timed layer must be constants, its data input included (MatMul: 2, the
    weight; Conv/ConvTranspose/Gemm: weight and bias, 3)."""
    return 2 if node.op_type == "MatMul" else 3


def _signature(layer: ModelProto) -> str:
    """Hash of the node (op, attributes) and every input's shape and type, without weight values."""
    h = hashlib.sha256()
    node = layer.graph.node[0]
    h.update(node.op_type.encode())
    for a in sorted(node.attribute, key=lambda a: a.name):
        h.update(a.SerializeToString())
    for vi in layer.graph.input:
        h.update(vi.type.SerializeToString())
    for t in layer.graph.initializer:
        h.update(str((list(t.dims), t.data_type)).encode())
    return h.hexdigest()[:24]


def timed_layers(group: ChannelGroup) -> tuple[str, ...]:
    """Names of the heavy layers whose cost the group's width changes (producers and consumers)."""
    names = dict.fromkeys(c.node for c in group.cuts if c.role in ("source", "sink") and c.op_type in TIMED_OPS)
    return tuple(names)


def layer_axes(dg: DependencyGraph, group: ChannelGroup) -> dict[str, tuple[str, float]]:
    """Per heavy layer of :func:`timed_layers`: the weight axis (or axes) the group cuts there, as a key, and
    the group's share of that axis' positions.

    Why: a layer's time follows its whole input (or output) width, of which a group may hold a slice (the
    concatenation a DenseNet or Inception layer reads, a Split's part); two groups with the same key remove
    channels from one sum (see :class:`onnxprune.runtime.prediction.LayerTable`)."""
    roots = np.arange(group.size, dtype=np.int64)
    keys: dict[str, list[str]] = {}
    share: dict[str, float] = {}
    for c in group.cuts:
        if c.role not in ("source", "sink") or c.op_type not in TIMED_OPS:
            continue
        keys.setdefault(c.node, []).append(f"{c.tensor}:{c.axis}")
        dims = dg.const_shapes.get(c.tensor)
        length = int(dims[c.axis]) if dims is not None and len(dims) > c.axis else 0
        part = c.positions(roots).size / length if length > 0 else 1.0
        share[c.node] = min(share.get(c.node, 1.0), min(part, 1.0))
    return {node: ("|".join(sorted(set(k))), share[node]) for node, k in keys.items()}


def layer_models(model: ModelProto, dg: DependencyGraph, group: ChannelGroup, widths: Iterable[int],
                 shapes: Mapping[str, tuple]) -> list[LayerModel]:
    """Every heavy layer of ``group`` rebuilt alone at each of ``widths``.

    Args:
        model: the analysed model (node attributes, opsets, element types).
        dg: its dependency graph.
        group: the group whose width varies (other groups keep their full width).
        widths: kept widths to build, each in ``1..group.size``.
        shapes: static shapes of the model's tensors at the batch to time (``core.shapefold.infer_shapes``).

    Returns:
        One :class:`LayerModel` per layer and width; layers that cannot be rebuilt (unknown shapes, a
        grouped non-depthwise conv, integer weights) are left out, so a group may give none.
    """
    by_name = {_node_name(n): n for n in model.graph.node}
    dtypes = {t.name: t.data_type for t in model.graph.initializer}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if vi.type.HasField("tensor_type"):
            dtypes.setdefault(vi.name, vi.type.tensor_type.elem_type)
    out: list[LayerModel] = []
    names = timed_layers(group)
    for width in widths:
        acts, consts = _axis_sizes(group, int(width))
        for name in names:
            node = by_name.get(name)
            if node is None:
                continue
            layer = _one_layer(model, node, dg, shapes, acts, consts, dtypes)
            if layer is not None:
                out.append(LayerModel(name, int(width), layer, _signature(layer)))
    return out

