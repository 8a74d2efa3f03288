"""Sparse initializers read as the dense tensors they stand for.

Why this lives in core: every command must read every model onnxprune writes, and ``prune
--sparse-storage`` writes weights as ``graph.sparse_initializer``. Parameter counts, MACs, weight discovery,
shape inference and ``onnx.checker``'s full check all read ``graph.initializer`` only (the full check even
refuses a sparse initializer feeding ``Conv``), so :func:`~onnxprune.core.io.load_model` turns sparse
initializers back into dense ones, bit for bit, before anything else looks at the model. onnxruntime
densifies them at load in the same way, so analysis and execution agree.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import ModelProto, SparseTensorProto, TensorProto, numpy_helper


def dense_tensor(sparse: SparseTensorProto) -> TensorProto:
    """The dense ``TensorProto`` a sparse one stands for (linear or coordinate indices), same name and bits.

    Example:
        >>> from onnx import helper
        >>> values = numpy_helper.from_array(np.array([2.0], np.float32), "w")
        >>> indices = numpy_helper.from_array(np.array([1], np.int64), "w_indices")
        >>> numpy_helper.to_array(dense_tensor(helper.make_sparse_tensor(values, indices, [3]))).tolist()
        [0.0, 2.0, 0.0]
    """
    values = numpy_helper.to_array(sparse.values)
    shape = tuple(int(d) for d in sparse.dims)
    dense = np.zeros(math.prod(shape), dtype=values.dtype)
    if values.size:
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64, copy=False)
        if indices.ndim == 2:
            indices = np.ravel_multi_index(tuple(indices.T), shape)
        dense[indices] = values.reshape(-1)
    tensor = numpy_helper.from_array(dense.reshape(shape), sparse.values.name)
    if sparse.values.HasField("doc_string"):
        tensor.doc_string = sparse.values.doc_string
    return tensor


def densify_sparse_initializers(model: ModelProto) -> int:
    """Move every main-graph sparse initializer into ``graph.initializer`` as a dense tensor, in place.

    Only call it on a model you own (``load_model`` calls it on its copy).

    Returns:
        How many tensors were densified.
    """
    graph = model.graph
    count = len(graph.sparse_initializer)
    for sparse in graph.sparse_initializer:
        graph.initializer.append(dense_tensor(sparse))
    del graph.sparse_initializer[:]
    return count
