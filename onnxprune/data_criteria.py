"""Data-aware importance: score weights and channels by what flows through them on calibration data.

Why this module exists: magnitude says how big a weight is, not how much it contributes. A weight that
multiplies an input which is almost always zero (after a ReLU) or tiny matters little however large it
is. Three criteria, usable for structured, unstructured and N:M pruning:

* ``activation`` — mean ``|x|`` of a channel (structured: the channel's own activation; sparse: each weight
  scored ``|W| × mean|x_j|`` of the input column it reads).
* ``apoz`` — average percentage of zeros: a channel that is mostly zero after its activation is less
  important (structured score ``1 − APoZ``; sparse: ``|W| × (1 − APoZ_j)``).
* ``wanda`` — ``|W| × ‖x_j‖₂`` (Sun et al., 2023): per weight for sparse pruning; for a structured channel
  the sum of this score over every weight that reads the channel in its consumers (sinks).

Statistics come from :func:`onnxprune.calibrate.collect_stats`, one onnxruntime pass per call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np
from onnx import ModelProto, NodeProto

from onnxprune.calibrate import GRAM_OPS, ActivationStats, ChannelStats, collect_stats
from onnxprune.errors import ConfigError
from onnxprune.io import load_model
from onnxprune.ir import GraphIndex, attr
from onnxprune.weights import PrunableWeight, find_prunable_weights, get_weight

log = logging.getLogger(__name__)

#: The data-aware criteria, by the name used with ``--importance``.
DATA_CRITERIA = ("activation", "apoz", "wanda")


def check_criterion(criterion: str) -> str:
    """Return ``criterion`` if it is a data-aware one, else raise ConfigError listing them."""
    if criterion not in DATA_CRITERIA:
        raise ConfigError(f"unknown data-aware criterion '{criterion}'; use one of {', '.join(DATA_CRITERIA)}")
    return criterion


def input_axis(node: NodeProto, opset: int) -> int:
    """The axis of a layer's data input that its weight reduces over (the input "column")."""
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 0 if attr(node, "transA", opset, 0) else 1
    return -1  # MatMul: the last axis of A


def column_factor(stats: ChannelStats, criterion: str) -> np.ndarray:
    """Per-input-column factor of the sparse score ``|W| × factor``: mean|x|, 1 − APoZ or ‖x‖₂."""
    if criterion == "activation":
        return stats.mean_abs
    if criterion == "apoz":
        return 1.0 - stats.zero_frac
    return stats.l2


def channel_score(stats: ChannelStats, criterion: str) -> np.ndarray:
    """Structured score of each channel of an activation tensor from its own statistics (higher = keep).

    ``activation``: mean ``|x|``; ``apoz``: ``1 − APoZ``. (``wanda`` needs the consumers' weights; see
    :func:`wanda_channel_score`.)
    """
    if criterion == "activation":
        return stats.mean_abs.copy()
    if criterion == "apoz":
        return 1.0 - stats.zero_frac
    raise ConfigError(f"criterion '{criterion}' has no per-channel score from activations alone")


def _broadcast_factor(node: NodeProto, w: np.ndarray, factor: np.ndarray, opset: int) -> np.ndarray:
    """Expand a per-input-column factor to the weight's shape, along its reduction axis."""
    op = node.op_type
    if op == "Conv":
        g = int(attr(node, "group", opset, 1))
        per_group = w.shape[1]
        # output channel o belongs to group o // (O/g) and reads input channels of that group
        o_per_g = w.shape[0] // g
        cols = (np.arange(w.shape[0])[:, None] // o_per_g) * per_group + np.arange(per_group)[None, :]
        f = factor[cols]  # (O, C/g)
        return f.reshape(f.shape + (1,) * (w.ndim - 2))
    if op == "Gemm":
        return factor[None, :] if attr(node, "transB", opset, 0) else factor[:, None]
    # MatMul weight (..., K, N): K is axis -2 (a 1-D weight is K)
    if w.ndim == 1:
        return factor
    return factor.reshape((-1, 1))


def sparse_scores(
    model: str | os.PathLike[str] | ModelProto,
    data: str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]] | ActivationStats,
    *,
    criterion: str = "wanda",
    batch_size: int = 32,
    max_samples: int | None = None,
) -> dict[str, np.ndarray]:
    """Per-weight importance (higher = keep) for :func:`onnxprune.sparsify.sparsify` ``scores=``.

    Every prunable weight gets ``|W| × factor`` where the factor, per input column it reads, is
    ``‖x_j‖₂`` (wanda), ``mean|x_j|`` (activation) or ``1 − APoZ_j`` (apoz), measured on the layer's input
    in one calibration pass. A weight read by several layers combines their factors (root of the sum of
    squares for wanda, mean otherwise). Weights whose reader inputs cannot be measured keep ``|W|``.

    Args:
        model: path or ``ModelProto`` (not modified).
        data: calibration npz path, iterable of feed dicts, or precomputed stats with the inputs' channels.
        criterion: ``wanda``, ``activation`` or ``apoz``.
        batch_size, max_samples: calibration batching.

    Returns:
        weight name → float64 array of the weight's shape.

    Example:
        >>> scores = sparse_scores("mlp.onnx", "calib.npz", criterion="wanda")  # doctest: +SKIP
        >>> sparsify("mlp.onnx", sparsity=0.7, scores=scores)  # doctest: +SKIP
    """
    check_criterion(criterion)
    m = load_model(model, check=False)
    idx = GraphIndex(m)
    weights = find_prunable_weights(m)
    readers: dict[str, list[NodeProto]] = {}
    axes: dict[str, int] = {}
    for pw in weights:
        nodes = [idx.nodes_by_name[r] for r in pw.readers]
        readers[pw.name] = nodes
        for node in nodes:
            if node.op_type in GRAM_OPS:
                axes[node.input[0]] = input_axis(node, idx.opset)
    if isinstance(data, ActivationStats):
        stats = data
    else:
        stats = collect_stats(m, data, tensors=axes, batch_size=batch_size, max_samples=max_samples)
    return {pw.name: _weight_score(m, idx, pw, readers[pw.name], stats, criterion) for pw in weights}


def _weight_score(model: ModelProto, idx: GraphIndex, pw: PrunableWeight, nodes: list[NodeProto],
                  stats: ActivationStats, criterion: str) -> np.ndarray:
    w = get_weight(model, pw).astype(np.float64)
    factors = []
    for node in nodes:
        cs = stats.channels.get(node.input[0])
        if node.op_type not in GRAM_OPS or cs is None:
            continue
        try:
            factors.append(np.broadcast_to(_broadcast_factor(node, w, column_factor(cs, criterion), idx.opset),
                                           w.shape))
        except (IndexError, ValueError):
            log.info("weight '%s': input statistics of %s do not fit its shape; scoring by |W|", pw.name, node.name)
    if not factors:
        return np.abs(w)
    if criterion == "wanda":
        factor = np.sqrt(sum(f**2 for f in factors))
    else:
        factor = sum(factors) / len(factors)
    return np.abs(w) * factor
