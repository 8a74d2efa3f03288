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
* ``ablation`` — attention heads only: the output error when the head alone is silenced (one pass per head);
  other groups are scored by ``activation`` (the plan records the fallback).

An attention head group (whole heads as root channels) scored by ``activation`` or ``ablation`` gets the
head measures of :mod:`onnxprune.recovery.head_criteria`: a head's output norm as the output projection sees
it, or the error when it is silenced.

Statistics come from :func:`onnxprune.recovery.calibrate.collect_stats`, one onnxruntime pass per call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np
from onnx import ModelProto, NodeProto

from onnxprune.core.errors import ConfigError
from onnxprune.core.io import load_model
from onnxprune.core.ir import GraphIndex, attr
from onnxprune.core.quant import dequantize
from onnxprune.core.weights import PrunableWeight, find_prunable_weights, get_weight
from onnxprune.recovery.calibrate import GRAM_OPS, ActivationStats, ChannelStats, collect_stats
from onnxprune.recovery.head_criteria import head_ablation, head_output_norm, head_sinks
from onnxprune.structured.analysis import ChannelGroup, DependencyGraph, ParamCut
from onnxprune.structured.attention import attention_heads
from onnxprune.structured.axes import ChannelAxis
from onnxprune.structured.importance import (
    ImportanceContext,
    l2_importance,
    normalize,
    per_root,
    register_criterion,
    slice_norms,
)

log = logging.getLogger(__name__)

#: The data-aware criteria, by the name used with ``--importance``.
DATA_CRITERIA = ("activation", "apoz", "wanda", "ablation")
#: Data-aware criteria that score only structured channel groups (no per-weight score for sparse modes).
GROUP_ONLY_CRITERIA = ("ablation",)


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
        g = int(attr(node, "group", opset, 1))  # type: ignore[call-overload]
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
    comparison: str = "output",
    batch_size: int = 32,
    max_samples: int | None = None,
) -> dict[str, np.ndarray]:
    """Per-weight importance (higher = keep) for :func:`onnxprune.sparse.sparsify.sparsify` ``scores=``.

    Every prunable weight gets ``|W| × factor`` where the factor, per input column it reads, is
    ``‖x_j‖₂`` (wanda), ``mean|x_j|`` (activation) or ``1 − APoZ_j`` (apoz), measured on the layer's input
    in one calibration pass. A weight read by several layers combines their factors (root of the sum of
    squares for wanda, mean otherwise). Weights whose reader inputs cannot be measured keep ``|W|``.

    With ``comparison="output"`` (default, as in the Wanda paper) weights compete only within their output
    row: the scores become within-row fractional ranks, so a layer-wise sparsity removes the same share of
    every output neuron's inputs (±1 at ties). N:M groups lie within a row, so N:M is unaffected.
    ``comparison="layer"`` returns the raw products, ranked over the whole layer.

    Args:
        model: path or ``ModelProto`` (not modified).
        data: calibration npz path, iterable of feed dicts, or precomputed stats with the inputs' channels.
        criterion: ``wanda``, ``activation`` or ``apoz``.
        comparison: ``"output"`` (rank within each output row) or ``"layer"``.
        batch_size, max_samples: calibration batching.

    Returns:
        weight name → float64 array of the weight's shape.

    Example:
        >>> scores = sparse_scores("mlp.onnx", "calib.npz", criterion="wanda")  # doctest: +SKIP
        >>> sparsify("mlp.onnx", sparsity=0.7, scores=scores)  # doctest: +SKIP
    """
    check_criterion(criterion)
    if criterion in GROUP_ONLY_CRITERIA:
        raise ConfigError(f"criterion '{criterion}' scores attention heads, not single weights; use one of "
                          f"{', '.join(c for c in DATA_CRITERIA if c not in GROUP_ONLY_CRITERIA)}")
    if comparison not in ("output", "layer"):
        raise ConfigError(f"comparison must be 'output' or 'layer', got '{comparison}'")
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
    scores = {pw.name: _weight_score(m, idx, pw, readers[pw.name], stats, criterion) for pw in weights}
    if comparison == "output":
        for pw in weights:
            axis = _output_axis(readers[pw.name], len(pw.shape), idx.opset)
            if axis is not None:
                scores[pw.name] = row_ranks(scores[pw.name], axis)
    return scores


def _output_axis(nodes: list[NodeProto], ndim: int, opset: int) -> int | None:
    """The output-channel axis of a weight (None when its readers disagree or it is 1-D)."""
    axes = set()
    for node in nodes:
        if node.op_type == "Conv":
            axes.add(0)
        elif node.op_type == "Gemm":
            axes.add(0 if attr(node, "transB", opset, 0) else 1)
        elif node.op_type == "MatMul":
            axes.add(ndim - 1)
        else:
            return None
    return axes.pop() if len(axes) == 1 and ndim >= 2 else None


def row_ranks(scores: np.ndarray, axis: int) -> np.ndarray:
    """Replace scores by their fractional rank within each slice along ``axis`` (ties by position).

    Example:
        >>> row_ranks(np.array([[3.0, 1.0, 2.0], [0.5, 9.0, 7.0]]), 0)
        array([[1.        , 0.33333333, 0.66666667],
               [0.33333333, 1.        , 0.66666667]])
    """
    moved = np.moveaxis(scores, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    ranks = np.empty_like(flat, dtype=np.float64)
    order = np.argsort(flat, axis=1, kind="stable")
    np.put_along_axis(ranks, order, np.arange(1, flat.shape[1] + 1, dtype=np.float64)[None, :], axis=1)
    ranks /= flat.shape[1]
    return np.moveaxis(ranks.reshape(moved.shape), 0, axis)


def _weight_score(model: ModelProto, idx: GraphIndex, pw: PrunableWeight, nodes: list[NodeProto],
                  stats: ActivationStats, criterion: str) -> np.ndarray:
    w = get_weight(model, pw)
    if pw.quant is not None:  # rank quantized entries by their dequantized value, as magnitude sparsity does
        w = dequantize(idx, pw.quant, w)
    w = w.astype(np.float64)
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
        factor = np.sqrt(np.sum(np.square(factors), axis=0))
    else:
        factor = np.mean(factors, axis=0)
    return np.abs(w) * factor


# -- structured criteria (channel groups) ----------------------------------------------------------
#: Key of :attr:`onnxprune.structured.importance.ImportanceContext.statistics` holding the :class:`ActivationStats`.
STATS_KEY = "activations"
#: Key of the calibration data itself (an npz path or a list of feed dicts), for criteria that run the model.
DATA_KEY = "calibration_data"
#: Key of the ablation errors already measured, by group id (budgets plan many times with the same statistics).
ABLATION_KEY = "ablation_errors"


def group_activation_slots(dg: DependencyGraph) -> dict[str, int]:
    """Tensor → channel axis of every activation the structured data criteria read.

    For each prunable group: the inputs of its sinks (the activations the consumers see, after any ReLU),
    or the outputs of its sources when it has no sink.
    """
    slots: dict[str, int] = {}
    for group in dg.prunable_groups:
        for cut in group.sinks or group.sources:
            if cut.activation is not None:
                slots.setdefault(cut.activation.tensor, cut.activation.axis)
    return slots


def collect_group_stats(
    model: str | os.PathLike[str] | ModelProto,
    dg: DependencyGraph,
    data: str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]],
    *,
    batch_size: int = 32,
    max_samples: int | None = None,
) -> dict[str, object]:
    """Calibrate once for the structured data criteria; pass the result as ``statistics=``.

    Besides the channel statistics, the Gram of each attention output projection's input is collected (the
    head output norm reads it), and the data are kept for criteria that run the model (``ablation``).

    Returns:
        ``{"activations": ActivationStats, "calibration_data": data}`` ready for
        :class:`~onnxprune.structured.importance.ImportanceContext`.

    Example:
        >>> stats = collect_group_stats(model, dg, "calib.npz")  # doctest: +SKIP
        >>> ctx = ImportanceContext(model, dg, statistics=stats)  # doctest: +SKIP
    """
    if not isinstance(data, (str, os.PathLike)):
        data = list(data)  # read twice: once here, once per ablated block
    heads = [c.node for g in dg.prunable_groups if attention_heads(g) for c in head_sinks(g)]
    stats = collect_stats(model, data, tensors=group_activation_slots(dg), batch_size=batch_size,
                          max_samples=max_samples, gram_for=list(dict.fromkeys(heads)))
    return {STATS_KEY: stats, DATA_KEY: data, ABLATION_KEY: {}}


def _stats(ctx: ImportanceContext, criterion: str) -> ActivationStats:
    stats = (ctx.statistics or {}).get(STATS_KEY)
    if not isinstance(stats, ActivationStats):
        raise ConfigError(
            f"importance '{criterion}' needs calibration data; pass --calib data.npz (in Python: "
            f"statistics=collect_group_stats(model, dg, data))"
        )
    return stats


def _activation_cuts(group: ChannelGroup) -> tuple[ParamCut, ...]:
    return tuple(c for c in (group.sinks or group.sources) if c.activation is not None)


def _group_channel_score(group: ChannelGroup, ctx: ImportanceContext, criterion: str) -> np.ndarray:
    stats = _stats(ctx, criterion)
    total = np.zeros(group.size)
    count = 0
    seen: set[ChannelAxis] = set()
    for cut in _activation_cuts(group):
        slot = cut.activation
        assert slot is not None
        cs = stats.channels.get(slot.tensor)
        if slot in seen or cs is None or cs.axis != slot.axis or slot not in group.members:
            continue
        seen.add(slot)
        roots, positions = group.members[slot].pairs(group.size)
        values = channel_score(cs, criterion)
        per = np.bincount(roots, weights=values[positions], minlength=group.size)[:group.size]
        width = np.bincount(roots, minlength=group.size)[:group.size]
        total += normalize(per / np.maximum(width, 1))
        count += 1
    if count == 0:
        log.info("group %d: no activation statistics for '%s'; falling back to l2", group.id, criterion)
        return l2_importance(group, ctx)
    return total / count


#: The name the prune pipeline calls :func:`collect_group_stats` by.
structured_statistics = collect_group_stats


def _head_weights(group: ChannelGroup, ctx: ImportanceContext) -> dict[str, np.ndarray]:
    return {c.tensor: np.asarray(ctx.weight(c.tensor), dtype=np.float64) for c in head_sinks(group)}


@register_criterion("activation")
def activation_importance(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    """Mean |activation| of each channel where its consumers read it (needs calibration data).

    A group of attention heads is scored by each head's output norm as the output projection sees it
    (:func:`~onnxprune.recovery.head_criteria.head_output_norm`), which weighs the head's activations by the
    rows they are multiplied by.
    """
    if attention_heads(group):
        norms = head_output_norm(group, _head_weights(group, ctx), _stats(ctx, "activation"))
        if norms is not None:
            return normalize(norms)
        log.info("group %d: no Gram of its output projection; heads scored by their channels' mean |x|", group.id)
    return _group_channel_score(group, ctx, "activation")


@register_criterion("ablation")
def ablation_importance(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    """Attention heads: the output error when each head alone is silenced; other groups: ``activation``.

    The fallback is recorded per group by :func:`~onnxprune.structured.importance.criterion_used`.
    """
    statistics = ctx.statistics or {}
    data, cache = statistics.get(DATA_KEY), statistics.get(ABLATION_KEY)
    if attention_heads(group) and data is not None:
        errors = cache.get(group.id) if isinstance(cache, dict) else None
        if errors is None:
            errors = head_ablation(group, ctx.model, data)  # type: ignore[arg-type]
            if isinstance(cache, dict):
                cache[group.id] = errors
        if errors is not None:
            return normalize(errors)
    return activation_importance(group, ctx)


@register_criterion("apoz")
def apoz_importance(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    """1 − average percentage of zeros of each channel: mostly-zero channels go first (needs data)."""
    return _group_channel_score(group, ctx, "apoz")


@register_criterion("wanda")
def wanda_importance(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    """Σ |W| × ‖x_j‖₂ over every sink weight reading the channel (needs calibration data).

    Sinks are summed before normalizing (the score is the channel's total contribution to its consumers'
    outputs); the result is scaled to ``[0, 1]`` like every criterion, for global ranking.
    """
    stats = _stats(ctx, "wanda")
    total = np.zeros(group.size)
    used = 0
    for cut in group.sinks:
        slot = cut.activation
        cs = stats.channels.get(slot.tensor) if slot is not None else None
        if cs is None or slot is None or cs.axis != slot.axis:
            continue
        w = np.abs(np.asarray(ctx.weight(cut.tensor), dtype=np.float64))
        per_position = slice_norms(w, cut.axis, 1)  # Σ |W| over everything but the input axis
        if per_position.shape[0] != cs.channels:
            continue
        total += per_root(cut, per_position * cs.l2, group.size)
        used += 1
    if used == 0:
        log.info("group %d: no sink statistics for 'wanda'; falling back to l2", group.id)
        return l2_importance(group, ctx)
    return normalize(total)


def wanda_channel_score(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    """Alias of the registered ``wanda`` structured criterion, for direct calls."""
    return wanda_importance(group, ctx)
