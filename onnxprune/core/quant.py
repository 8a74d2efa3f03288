"""Quantized (QDQ) weights: a stored integer tensor read through ``DequantizeLinear``.

Why a module of its own: a QDQ model (onnxruntime's ``quantize_static`` with ``QuantFormat.QDQ``) stores a
layer's weight as ``int8``/``uint8`` and computes the float weight at run time as ``(q - zero_point) *
scale``. Folding that into a float initializer would silently de-quantize the model (3-4x the file size), so
every mode prunes the integer tensor itself: sparsity sets entries to their zero point (a dequantized 0),
structured pruning slices the integer tensor together with its per-channel scale and zero point. Weight
discovery, constant folding, parameter counting, importance scores and the structured oracle all need the
same answer to "is this tensor a dequantized constant, and with which scale and zero point", given here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import NodeProto, TensorProto

from onnxprune.core.ir import GraphIndex, attr, node_label

#: The ops that move a tensor between float and integer precision.
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
#: Ops of onnxruntime's other format (QOperator), which onnxprune does not prune.
QOPERATOR_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm"})
#: Integer weight types onnxprune prunes in place.
QUANT_TYPES = (TensorProto.INT8, TensorProto.UINT8)


@dataclass(frozen=True)
class Dequantized:
    """A ``DequantizeLinear`` whose data input is a stored constant (a quantized weight).

    Attributes:
        output: the float tensor the layer reads.
        node: the DequantizeLinear node, as ``'name' (DequantizeLinear)``.
        data: the integer storage tensor (Identity resolved).
        scale: the scale tensor (Identity resolved).
        zero_point: the zero-point tensor, ``""`` when absent (zero point 0).
        axis: the quantized axis of ``data`` (non-negative) for a per-channel scale, None for a per-tensor one.
        data_type: the element type of ``data``.
        reason: why onnxprune cannot cut or zero this constant in place (empty: it can).
    """

    output: str
    node: str
    data: str
    scale: str
    zero_point: str
    axis: int | None
    data_type: int
    reason: str = ""


def dequantized(index: GraphIndex, name: str) -> Dequantized | None:
    """The quantized weight behind ``name`` when it is the output of a DequantizeLinear of a constant, else None.

    A result with a non-empty ``reason`` is a quantized constant onnxprune must leave alone (and say why): a
    runtime-computed scale or zero point, or block quantization. The element type is not checked here (an
    int32 bias is sliced like an int8 weight); sparsity accepts only :data:`QUANT_TYPES`.
    """
    node = index.producer.get(name)
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    if not node.input or not index.is_constant(node.input[0]):
        return None
    data = index.resolve_identity(node.input[0])
    shape = index.const_shape(data) or ()
    tensor = index.initializers.get(data)
    data_type = int(tensor.data_type) if tensor is not None else _constant_type(index, data)
    scale = node.input[1] if len(node.input) > 1 else ""
    zp = node.input[2] if len(node.input) > 2 else ""
    label = node_label(node)
    reason = ""
    axis: int | None = None
    if not scale or not index.is_constant(scale) or (zp and not index.is_constant(zp)):
        reason = f"{label}: its scale or zero point is computed at run time"
    else:
        scale_shape = index.const_shape(scale) or ()
        if int(attr(node, "block_size", index.opset, 0) or 0) > 0:  # type: ignore[call-overload]
            reason = f"{label}: block quantization (block_size) is not supported; use per-channel or per-tensor"
        elif len(scale_shape) > 1 or (len(scale_shape) == 1 and scale_shape[0] != 1 and not shape):
            reason = f"{label}: scale of shape {list(scale_shape)} is not per-tensor or per-channel"
        elif len(scale_shape) == 1 and scale_shape[0] != 1:
            axis = int(attr(node, "axis", index.opset, 1))  # type: ignore[call-overload]
            axis = axis + len(shape) if axis < 0 else axis
            if not 0 <= axis < len(shape) or shape[axis] != scale_shape[0]:
                reason = (f"{label}: per-channel scale of size {scale_shape[0]} does not match axis {axis} of "
                          f"{list(shape)}")
    return Dequantized(name, label, data, index.resolve_identity(scale) if scale else "",
                       index.resolve_identity(zp) if zp else "", axis, data_type, reason)


def _constant_type(index: GraphIndex, name: str) -> int:
    value = index.const_value(name)
    if value is None:
        return TensorProto.UNDEFINED
    from onnx import helper

    try:
        return int(helper.np_dtype_to_tensor_dtype(value.dtype))
    except (KeyError, ValueError, TypeError):
        return TensorProto.UNDEFINED


def dequantizers(index: GraphIndex, data: str) -> list[NodeProto]:
    """The DequantizeLinear nodes reading the constant ``data`` as their data input (through Identity)."""
    return [n for n in index.const_readers(data)
            if n.op_type == "DequantizeLinear" and n.domain in ("", "ai.onnx") and n.input
            and index.resolve_identity(n.input[0]) == data]


def _broadcast(value: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    """A per-channel vector (``axis``) or a scalar shaped to broadcast against a rank-``ndim`` tensor."""
    flat = np.asarray(value).reshape(-1)
    if axis is None or flat.size == 1:
        return flat.reshape((1,) * ndim) if ndim else flat.reshape(())
    shape = [1] * ndim
    shape[axis] = flat.size
    return flat.reshape(shape)


def zero_point(index: GraphIndex, dq: Dequantized, ndim: int) -> np.ndarray:
    """The zero point of ``dq`` in the data's dtype, shaped to broadcast against the data (0 when absent)."""
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(dq.data_type)
    if not dq.zero_point:
        return np.zeros((1,) * ndim, dtype=dtype)
    value = index.const_value(dq.zero_point)
    return _broadcast(np.asarray(value).astype(dtype, copy=False), dq.axis, ndim)


def dequantize(index: GraphIndex, dq: Dequantized, data: np.ndarray) -> np.ndarray:
    """``(data - zero_point) * scale`` in float32, as DequantizeLinear computes it."""
    scale = _broadcast(np.asarray(index.const_value(dq.scale)), dq.axis, data.ndim).astype(np.float32)
    zp = zero_point(index, dq, data.ndim).astype(np.int32)
    return ((data.astype(np.int32) - zp).astype(np.float32) * scale).astype(np.float32)


def quantized_data(index: GraphIndex) -> dict[str, Dequantized]:
    """Every integer constant read through a supported DequantizeLinear, keyed by its storage name.

    Used to count such tensors as parameters and to score them by their dequantized values.
    """
    found: dict[str, Dequantized] = {}
    for node in index.graph.node:
        if node.op_type == "DequantizeLinear" and node.output:
            dq = dequantized(index, node.output[0])
            if dq is not None and not dq.reason:
                found.setdefault(dq.data, dq)
    return found


def quantized_outputs(index: GraphIndex) -> dict[str, Dequantized]:
    """Output name -> :class:`Dequantized` for every DequantizeLinear of a constant (supported or not)."""
    found: dict[str, Dequantized] = {}
    for node in index.graph.node:
        if node.op_type == "DequantizeLinear" and node.output:
            dq = dequantized(index, node.output[0])
            if dq is not None:
                found[dq.output] = dq
    return found
