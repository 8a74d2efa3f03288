"""Store sparse weights as ONNX ``sparse_initializer``s so that pruned models take less disk.

What this buys, honestly: **file and download size only.** onnxruntime turns every sparse initializer back
into a dense tensor when it loads the model, so memory at run time and latency are the same as for the
dense file. Use it for shipping a pruned model, not for speed.

Format: a ``SparseTensorProto`` whose ``values`` holds the non-zero entries (same dtype, same name as the
dense tensor) and whose ``indices`` holds their *linear* (flat, C-order) positions as ascending int64,
which is what ``onnx.checker`` requires (int64 only) and what onnxruntime reads. Each stored entry
therefore costs ``itemsize + 8`` bytes, so a tensor only shrinks above a break-even sparsity of
``8 / (itemsize + 8)``: 2/3 for float32, 4/5 for float16, 1/2 for double. Below that the tensor stays dense
(:func:`to_sparse_storage` converts a tensor only when its serialized form really gets smaller), which means
that 50% unstructured float32 sparsity does not shrink the file this way; 2:4 does not either.

Entries are "zero" by their bits: ``-0.0`` is stored as a value, so densifying gives back the exact
original bits.

``Constant``-node weights are left dense. onnxruntime 1.32 would accept a ``Constant`` with
``sparse_value`` feeding ``MatMul`` too, but the rest of onnxprune (``ir.constant_node_value``, stats,
weight discovery) reads only ``value`` tensors, and exporters rarely write large weights as ``Constant``
nodes, so the gain is not worth a second format.

Validity, honestly: ``onnx.checker.check_model`` (default) accepts the result, but with ``full_check=True``
(and in strict shape inference) onnx types a sparse initializer as ``sparse_tensor(T)``, which ``Conv``,
``Gemm`` and ``MatMul`` do not accept, so the check fails. onnxruntime (1.32, tested here) densifies sparse
initializers at load and runs the model with identical outputs. So this is an onnxruntime-compatible
shipping format: validate the dense model, convert last, just before saving, and compare onnxruntime
outputs (not ``full_check``) on the converted one. Reading such a file back is transparent:
:func:`onnxprune.core.io.load_model` turns sparse initializers into the dense tensors they stand for
(:mod:`onnxprune.core.densify`), so ``validate``, ``analyze``, ``bench`` and a second ``prune`` count and
check them like any other weight; :func:`from_sparse_storage` does the same for a ``ModelProto``.
"""

from __future__ import annotations

import logging
import math
import numbers
import os

import numpy as np
from onnx import ModelProto, SparseTensorProto, TensorProto, helper, numpy_helper

from onnxprune.core.densify import densify_sparse_initializers
from onnxprune.core.errors import ConfigError
from onnxprune.core.io import load_model
from onnxprune.core.weights import SPARSIFIABLE_TYPES

log = logging.getLogger(__name__)

#: Bytes of one linear index in a SparseTensorProto (the checker accepts int64 only).
INDEX_BYTES = 8


def break_even_sparsity(data_type: int) -> float:
    """Sparsity above which a tensor of this ONNX element type gets smaller in sparse form.

    Example:
        >>> round(break_even_sparsity(TensorProto.FLOAT), 4)
        0.6667
    """
    itemsize = helper.tensor_dtype_to_np_dtype(data_type).itemsize
    return INDEX_BYTES / (itemsize + INDEX_BYTES)


def _nonzero_positions(value: np.ndarray) -> np.ndarray:
    """Flat positions of the entries whose bits are not all zero (``-0.0`` counts as a value)."""
    flat = value.reshape(-1)
    bits = flat.view(np.dtype(f"u{flat.dtype.itemsize}"))
    return np.flatnonzero(bits)


def _to_sparse(tensor: TensorProto, value: np.ndarray, positions: np.ndarray) -> SparseTensorProto:
    values = numpy_helper.from_array(value.reshape(-1)[positions], tensor.name)
    if tensor.HasField("doc_string"):
        values.doc_string = tensor.doc_string
    indices = numpy_helper.from_array(positions.astype(np.int64, copy=False), f"{tensor.name}_indices")
    return helper.make_sparse_tensor(values, indices, list(tensor.dims))


def to_sparse_storage(
    model: str | os.PathLike[str] | ModelProto,
    *,
    min_sparsity: float = 0.5,
) -> ModelProto:
    """Move sparse floating-point initializers into ``graph.sparse_initializer`` (see module docstring).

    A tensor is converted when its sparsity is at least ``min_sparsity`` *and* its sparse form serializes
    smaller than the dense one; everything else is left exactly as it was. Initializers that are also
    graph inputs (overridable at run time) stay dense.

    Args:
        model: a path or a ``ModelProto`` (never modified).
        min_sparsity: do not convert tensors below this sparsity, in ``[0, 1]``; the byte test applies
            anyway, so this only raises the bar.

    Returns:
        A new ``ModelProto``; onnxruntime gives the same outputs for it as for the input.

    Raises:
        ConfigError: ``min_sparsity`` outside ``[0, 1]``.

    Example:
        >>> save_model(to_sparse_storage(result.model), "pruned.onnx")  # doctest: +SKIP
    """
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, numbers.Real) or not (
            math.isfinite(float(min_sparsity)) and 0.0 <= float(min_sparsity) <= 1.0):
        raise ConfigError(f"min_sparsity must be a number in [0, 1], got {min_sparsity!r}")
    out = load_model(model, check=not isinstance(model, ModelProto))
    graph = out.graph
    inputs = {i.name for i in graph.input}
    moved: list[int] = []
    saved = 0
    for i, tensor in enumerate(graph.initializer):
        numel = math.prod(tensor.dims)
        if (tensor.data_type not in SPARSIFIABLE_TYPES or tensor.name in inputs or numel == 0
                or tensor.data_location == TensorProto.EXTERNAL):
            continue
        value = numpy_helper.to_array(tensor)
        positions = _nonzero_positions(value)
        sparsity = 1.0 - positions.size / numel
        if sparsity < max(float(min_sparsity), break_even_sparsity(tensor.data_type)):
            continue
        sparse = _to_sparse(tensor, value, positions)
        del value, positions
        if sparse.ByteSize() >= tensor.ByteSize():
            continue
        saved += tensor.ByteSize() - sparse.ByteSize()
        graph.sparse_initializer.append(sparse)
        moved.append(i)
    for i in reversed(moved):
        del graph.initializer[i]
    log.info("sparse storage: %d initializers converted, about %d bytes saved", len(moved), saved)
    return out


def from_sparse_storage(model: str | os.PathLike[str] | ModelProto) -> ModelProto:
    """A copy of ``model`` with every sparse initializer turned back into a dense initializer.

    Useful before analysis (parameter counts, shape inference, ``full_check``) of a file written by
    :func:`to_sparse_storage` or by another tool; bit-exact inverse of :func:`to_sparse_storage`.

    Example:
        >>> dense = from_sparse_storage("pruned.onnx")  # doctest: +SKIP
    """
    out = load_model(model, check=not isinstance(model, ModelProto))  # a path is densified as it loads
    densify_sparse_initializers(out)
    return out
