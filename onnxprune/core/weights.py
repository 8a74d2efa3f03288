"""Discovery of the weights that unstructured and N:M sparsity may zero, and access to their values.

Why a module of its own: sparsify, N:M, data-aware scoring (wanda) and the masked least-squares re-fit all
need the same answer to "which tensors are weights, where are they stored, and along which axis does the
layer reduce", and they must agree on it. Only the weight input of ``Conv``, ``ConvTranspose``, ``Gemm``
(input ``B``) and ``MatMul`` (second input, constant) is prunable; biases, normalization parameters and
shape constants never are, because zeroing them changes the function of the model rather than thinning a
dot product.

A weight is keyed by its *storage*: the initializer or ``Constant`` node output that really holds the
values after following ``Identity`` nodes, so a tensor shared by several layers (directly or through an
``Identity``) is listed once, with all its readers.

A quantized (QDQ) weight, an ``int8``/``uint8`` constant read through ``DequantizeLinear``, is listed by its
integer storage with :attr:`PrunableWeight.quant` set: sparsity then scores entries by their dequantized
value and zeroes them by setting them to their zero point, so the model stays quantized.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from onnxprune.core.errors import ConfigError
from onnxprune.core.ir import FLOAT_TYPES, GraphIndex, attr, copy_fields, node_key, node_label
from onnxprune.core.quant import QOPERATOR_OPS, QUANT_TYPES, Dequantized, dequantized

log = logging.getLogger(__name__)

#: The weight input slot of each prunable op type (default domain only).
WEIGHT_SLOT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
#: Element types sparsity can zero without changing how the tensor is stored.
SPARSIFIABLE_TYPES = FLOAT_TYPES

WeightKind = Literal["initializer", "constant"]


@dataclass(frozen=True)
class PrunableWeight:
    """One prunable weight tensor, listed once however many layers read it.

    Attributes:
        name: the storage tensor (initializer name or ``Constant`` node output), after resolving Identity.
        kind: ``"initializer"`` or ``"constant"`` (a ``Constant`` node with a ``value`` tensor).
        readers: names of the nodes that use it as their weight (node name, or ``<op_type>_<index>`` for an
            unnamed node), in graph order.
        op_types: op type of each reader, aligned with ``readers``.
        shape: the tensor's shape.
        data_type: its ONNX element type (``onnx.TensorProto.FLOAT`` ...).
        reduction_axes: the axes that the readers sum over, in order; flattened together (C order) they
            form the dimension along which N:M groups of consecutive weights are taken. Conv: ``(1, ..)``
            (input channels × kernel, i.e. ``W[o]`` flattened); Gemm: ``(1,)`` with ``transB=1`` (``W`` is
            ``[N, K]``) and ``(0,)`` with ``transB=0`` (``W`` is ``[K, N]``); MatMul: ``(ndim - 2,)``
            (``W`` is ``[..., K, N]``; ``(0,)`` for a 1-D ``W``); ConvTranspose (``group=1``): ``(0,)``.
            Empty when there is no single answer (readers disagree, grouped ConvTranspose); then
            ``reduction_note`` says why.
        reduction_note: why ``reduction_axes`` is empty, else ``""``.
        quant: for a weight stored as int8/uint8 behind ``DequantizeLinear``, its scale, zero point and axis;
            None for a float weight.
    """

    name: str
    kind: WeightKind
    readers: tuple[str, ...]
    op_types: tuple[str, ...]
    shape: tuple[int, ...]
    data_type: int
    reduction_axes: tuple[int, ...]
    reduction_note: str = ""
    quant: Dequantized | None = None

    @property
    def numel(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def reduction_size(self) -> int:
        """Length of the reduction dimension (product of ``reduction_axes``), 0 when unknown."""
        if not self.reduction_axes:
            return 0
        return int(np.prod([self.shape[a] for a in self.reduction_axes], dtype=np.int64))


@dataclass(frozen=True)
class SkippedWeight:
    """A tensor that looked like a weight (or was asked for) but is left alone, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class WeightScan:
    """What :func:`scan_weights` found: the prunable weights and the weight-like tensors it refused."""

    weights: tuple[PrunableWeight, ...]
    skipped: tuple[SkippedWeight, ...]


def _reduction_axes(node: NodeProto, ndim: int, opset: int) -> tuple[tuple[int, ...], str]:
    """Reduction axes of ``node``'s weight, or ``()`` and the reason there are none."""
    op = node.op_type
    if op == "Conv":
        return tuple(range(1, ndim)), ""
    if op == "ConvTranspose":
        if int(attr(node, "group", opset, 1)) != 1:  # type: ignore[call-overload]
            return (), f"{node_label(node)} is a grouped ConvTranspose (no single reduction axis)"
        return (0,), ""
    if op == "Gemm":
        return ((1,) if int(attr(node, "transB", opset, 0)) else (0,)), ""  # type: ignore[call-overload]
    # MatMul
    return ((ndim - 2,) if ndim >= 2 else (0,)), ""


def scan_weights(model: ModelProto) -> WeightScan:
    """Find the prunable weights and report weight-like tensors that must stay untouched.

    A weight is refused (listed in ``skipped``) when it is also read by a node that does not use it as a
    weight (a bias ``Add``, a second input slot, an ``If`` body), when it (or an Identity of it) is a
    graph output, when its element type is not floating point, or when a ``Constant`` node stores it in
    a form other than a ``value`` tensor. Zeroing such a tensor would change more than a dot product.

    Args:
        model: the model to scan; it is not modified.

    Returns:
        A :class:`WeightScan`, weights in the order of their first reader in the graph.
    """
    idx = GraphIndex(model)
    outputs = set(idx.graph_outputs)
    keys = {id(node): (i, node_key(node, i)) for i, node in enumerate(model.graph.node)}
    weights: list[PrunableWeight] = []
    skipped: list[SkippedWeight] = []
    seen: set[str] = set()
    for node in model.graph.node:
        if node.op_type in QOPERATOR_OPS and node.domain in ("", "ai.onnx", "com.microsoft"):
            skipped.append(SkippedWeight(node_label(node), f"{node_label(node)} is a QOperator-format op, which "
                                         "onnxprune does not prune; quantize with QuantFormat.QDQ instead"))
            continue
        slot = WEIGHT_SLOT.get(node.op_type)
        if slot is None or node.domain not in ("", "ai.onnx") or len(node.input) <= slot:
            continue
        if not node.input[slot]:
            continue
        dq = None if idx.is_constant(node.input[slot]) else dequantized(idx, idx.resolve_identity(node.input[slot]))
        if dq is None and not idx.is_constant(node.input[slot]):
            continue
        src = dq.data if dq is not None else idx.resolve_identity(node.input[slot])
        if src in seen:
            continue
        seen.add(src)
        found = _inspect(idx, src, outputs, keys, dq)
        if isinstance(found, SkippedWeight):
            log.debug("not prunable: %s (%s)", found.name, found.reason)
            skipped.append(found)
        else:
            weights.append(found)
    return WeightScan(tuple(weights), tuple(skipped))


def _same_quant(idx: GraphIndex, node: NodeProto, dq: Dequantized) -> bool:
    """``node`` is a DequantizeLinear of ``dq``'s data with the same scale, zero point and axis."""
    if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx") or not node.output:
        return False
    other = dequantized(idx, node.output[0])
    return other is not None and (other.data, other.scale, other.zero_point, other.axis) == (
        dq.data, dq.scale, dq.zero_point, dq.axis)


def _inspect(
    idx: GraphIndex, src: str, outputs: set[str], keys: dict[int, tuple[int, str]], dq: Dequantized | None = None
) -> PrunableWeight | SkippedWeight:
    """Classify the constant ``src`` (read through ``dq`` when quantized): a prunable weight, or a refusal."""
    kind: WeightKind = "initializer" if src in idx.initializers else "constant"
    tensor = idx.initializers[src] if kind == "initializer" else _constant_tensor(idx.constant_nodes[src])
    if tensor is None:
        return SkippedWeight(src, "Constant node does not store a 'value' tensor")
    if dq is not None and dq.reason:
        return SkippedWeight(src, dq.reason)
    if dq is not None and tensor.data_type not in QUANT_TYPES:
        return SkippedWeight(src, f"quantized element type {TensorProto.DataType.Name(tensor.data_type)} is not "
                                  f"int8 or uint8")
    if dq is None and tensor.data_type not in SPARSIFIABLE_TYPES:
        return SkippedWeight(src, f"element type {TensorProto.DataType.Name(tensor.data_type)} is not float")
    readers: list[NodeProto] = []
    stack = [src]
    while stack:
        name = stack.pop()
        if name in outputs:
            return SkippedWeight(src, f"'{name}' is a graph output")
        for node in idx.consumers.get(name, []):
            if node.op_type == "Identity" and node.domain in ("", "ai.onnx"):
                stack.append(node.output[0])
                continue
            if dq is not None and _same_quant(idx, node, dq) and list(node.input).count(name) == 1 \
                    and node.input[0] == name:
                stack.append(node.output[0])  # the dequantized weight: its readers are the layers
                continue
            slot = WEIGHT_SLOT.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            slots = [i for i, inp in enumerate(node.input) if inp == name]
            if slot is None or slots != [slot]:
                where = f"input {slots[0]}" if slots else "a subgraph"
                return SkippedWeight(src, f"also read by {node_label(node)} as {where}, not as its weight")
            readers.append(node)
    readers.sort(key=lambda n: keys[id(n)][0])
    shape = tuple(int(d) for d in tensor.dims)
    axes_set = {_reduction_axes(n, len(shape), idx.opset) for n in readers}
    if len(axes_set) == 1:
        axes, note = axes_set.pop()
    else:
        axes, note = (), "its readers reduce along different axes"
    return PrunableWeight(
        name=src,
        kind=kind,
        readers=tuple(keys[id(n)][1] for n in readers),
        op_types=tuple(n.op_type for n in readers),
        shape=shape,
        data_type=int(tensor.data_type),
        reduction_axes=axes,
        reduction_note=note,
        quant=dq,
    )


def _constant_tensor(node: NodeProto) -> TensorProto | None:
    """The ``value`` tensor of a Constant node (the only form sparsity rewrites), else None."""
    for a in node.attribute:
        if a.name == "value":
            return a.t
    return None


def find_prunable_weights(model: ModelProto) -> list[PrunableWeight]:
    """The weights that unstructured and N:M sparsity may zero.

    Args:
        model: the model to scan; it is not modified.

    Returns:
        One :class:`PrunableWeight` per storage tensor, in the order of its first reader in the graph.

    Example:
        >>> [w.name for w in find_prunable_weights(model)]  # doctest: +SKIP
        ['w1', 'w2']
    """
    return list(scan_weights(model).weights)


def _storage(model: ModelProto, pw: PrunableWeight) -> TensorProto:
    """The ``TensorProto`` that holds ``pw`` in ``model`` (looked up by name, so any copy works)."""
    if pw.kind == "initializer":
        for tensor in model.graph.initializer:
            if tensor.name == pw.name:
                return tensor
    else:
        for node in model.graph.node:
            if node.op_type == "Constant" and node.output and node.output[0] == pw.name:
                found = _constant_tensor(node)
                if found is not None:
                    return found
    raise ConfigError(
        f"weight '{pw.name}' ({pw.kind}) is not in this model; call find_prunable_weights on the same model"
    )


def get_weight(model: ModelProto, pw: PrunableWeight, *, copy: bool = True) -> np.ndarray:
    """The value of a prunable weight, in its own dtype and shape.

    Args:
        model: a model holding ``pw`` (looked up by name, so any copy of the scanned model works).
        pw: the weight.
        copy: ``True`` (default) returns a new writable array; ``False`` may return a read-only view of the
            proto's bytes, which saves a copy of the tensor when only reading.

    Raises:
        ConfigError: the model has no such initializer or Constant node.
    """
    value = numpy_helper.to_array(_storage(model, pw))
    if copy and not value.flags.writeable:
        value = value.copy()
    return value


#: TensorProto fields that hold values; everything else (name, dims, type, doc, metadata) is metadata.
_DATA_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "raw_data", "double_data",
                "uint64_data", "external_data", "data_location")


def copy_model_without_weights(model: ModelProto, names: Collection[str]) -> ModelProto:
    """A deep copy of ``model`` in which the initializers named in ``names`` carry no values yet.

    Why: python protobuf (upb) keeps a replaced bytes field alive in the message's arena until the whole
    model is freed, so copying a model and then overwriting its weights costs two models of memory. Copying
    everything else and filling the named weights once with :func:`set_weight` costs one.
    The named initializers keep their name, dims, data_type, doc_string and metadata; fill every one of
    them before using the model.
    """
    out = ModelProto()
    copy_fields(out, model, skip=("graph",))
    copy_fields(out.graph, model.graph, skip=("initializer",))
    wanted = set(names)
    for tensor in model.graph.initializer:
        if tensor.name in wanted:
            copy_fields(out.graph.initializer.add(), tensor, skip=_DATA_FIELDS)
        else:
            out.graph.initializer.add().CopyFrom(tensor)
    return out


def set_weight(model: ModelProto, pw: PrunableWeight, array: np.ndarray) -> None:
    """Replace the values of a weight in ``model`` in place, keeping its name, dtype, shape and metadata.

    This is the one mutating helper; callers use it on their own copy of a model (see
    :func:`copy_model_without_weights`). Values are written as little-endian ``raw_data``.

    Raises:
        ConfigError: ``array`` has another shape or dtype than the weight, or the model lacks it.
    """
    tensor = _storage(model, pw)
    shape = tuple(int(d) for d in tensor.dims)
    if tuple(array.shape) != shape:
        raise ConfigError(f"new value of weight '{pw.name}' has shape {tuple(array.shape)}, expected {shape}")
    try:
        data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    except (KeyError, ValueError, TypeError):
        data_type = TensorProto.UNDEFINED
    if data_type != tensor.data_type:
        raise ConfigError(
            f"new value of weight '{pw.name}' has dtype {array.dtype}, expected "
            f"{TensorProto.DataType.Name(tensor.data_type)}; cast it with array.astype(...)"
        )
    _write_raw(tensor, little_endian_bytes(array))


def little_endian_bytes(array: np.ndarray) -> bytes:
    """The bytes ONNX ``raw_data`` stores for ``array`` (little-endian, C order)."""
    data = np.ascontiguousarray(array)
    if sys.byteorder == "big":
        data = data.byteswap()
    return data.tobytes()


def set_weight_bytes(model: ModelProto, pw: PrunableWeight, data: bytes) -> None:
    """Like :func:`set_weight`, from :func:`little_endian_bytes` of a same-dtype, same-shape array.

    Why: protobuf copies the bytes it is given, so a caller that converts and then drops its array first
    keeps one tensor less in memory at the peak; this matters on 100 MB models.

    Raises:
        ConfigError: ``data`` has another length than the weight's bytes, or the model lacks it.
    """
    tensor = _storage(model, pw)
    expected = pw.numel * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    if len(data) != expected:
        raise ConfigError(f"new value of weight '{pw.name}' has {len(data)} bytes, expected {expected}")
    _write_raw(tensor, data)


def _write_raw(tensor: TensorProto, data: bytes) -> None:
    for field in _DATA_FIELDS:
        tensor.ClearField(field)
    tensor.raw_data = data
