"""Data-aware sparsity in one shot or stage by stage: Wanda, SparseGPT and the masked re-fit, on calibration data.

Why this module exists: the data-aware sparse methods read each layer's input on calibration data (its column
norms for Wanda, its Gram matrix ``XᵀX`` for SparseGPT and the least-squares re-fit). One shot measures
every layer on the *dense* model, in one onnxruntime pass. But once the layers before layer ``k`` are pruned,
``k`` no longer sees the dense inputs: its zeros and updates were chosen for inputs it will not get.
Sequential calibration measures layer ``k`` on the model in which every layer before it is already pruned (and
re-fitted), as the SparseGPT and Wanda papers do block by block.

Stages: layers are taken in topological order and grouped by *depth*, the largest number of weighted layers
(Conv, Gemm, MatMul, ... reading a prunable weight) on any path from the inputs to the layer's data input.
Layers of one depth never feed each other (a transformer's Q, K and V projections share one), so each stage
costs one onnxruntime pass over the calibration data: ``depth + 1`` passes instead of one.

The target of each layer stays its own dense weight on the inputs it now sees, ``‖X̃W − X̃Ŵ‖`` (as in
SparseGPT); targeting the dense model's activations instead would need both models run side by side.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxprune.core.errors import ConfigError
from onnxprune.core.io import load_model
from onnxprune.core.ir import GraphIndex, matches_any, node_key
from onnxprune.core.weights import PrunableWeight, SkippedWeight, find_prunable_weights
from onnxprune.recovery.calibrate import GRAM_OPS, ActivationStats, collect_paired_grams, collect_stats
from onnxprune.recovery.data_criteria import DATA_CRITERIA, input_axis, sparse_scores
from onnxprune.recovery.recover import recover_sparse, refuse_quantized
from onnxprune.recovery.sparsegpt import SparseGPTUpdate, gram_layers, refuse_quantized_sparsegpt
from onnxprune.sparse.sparsify import SparsifyResult, sparsify, sparsify_nm

log = logging.getLogger(__name__)

#: Sparse criteria that read only the weights.
WEIGHT_CRITERIA = ("magnitude", "l1", "l2")
#: Every criterion :func:`sparsify_calibrated` takes.
CRITERIA = (*WEIGHT_CRITERIA, *DATA_CRITERIA, "sparsegpt")

Data = str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]]


def layer_stages(model: ModelProto) -> dict[str, int]:
    """Stage (depth) of every prunable weight: the most weighted layers on a path to its readers' data input.

    A weight read by several layers takes the earliest stage of its readers. Nodes are read in graph order,
    which ONNX requires to be topological.

    Example:
        >>> stages = layer_stages(load_model("mlp.onnx"))  # doctest: +SKIP
        >>> sorted(set(stages.values()))  # doctest: +SKIP
        [0, 1, 2]
    """
    idx = GraphIndex(model)
    weights = find_prunable_weights(model)
    weighted: dict[str, str] = {}  # node key -> weight name
    for pw in weights:
        for reader in pw.readers:
            weighted.setdefault(reader, pw.name)
    depth: dict[str, int] = {}
    node_stage: dict[str, int] = {}
    for i, node in enumerate(idx.graph.node):  # every node, even one whose name another node has too
        key = node_key(node, i)
        level = max((depth.get(t, 0) for t in node.input if t and not idx.is_constant(t)), default=0)
        if key in weighted:
            node_stage[key] = level
            level += 1
        for out in node.output:
            depth[out] = level
    return {pw.name: min(node_stage.get(r, 0) for r in pw.readers) for pw in weights}


@dataclass
class CalibratedSparsity:
    """What :func:`sparsify_calibrated` made.

    Attributes:
        model: the sparse (and, with a re-fit or SparseGPT, updated) model.
        result: the per-layer account (its ``model`` is the sparse model before any re-fit).
        info: JSON-ready: ``calibration`` (``sequential``, ``stages``, ``passes``, ``seconds``), ``sparsegpt``
            (weights updated, weights pruned by magnitude instead) and ``recovery``.
    """

    model: ModelProto
    result: SparsifyResult
    info: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """The sparsity report plus :attr:`info`, for a prune report."""
        return {**self.result.report(), **self.info}


def _check(criterion: str, scope: str, sequential: bool, refit: bool) -> None:
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown sparse criterion '{criterion}'; use one of {', '.join(CRITERIA)}")
    if sequential and scope != "layer":
        raise ConfigError("--sequential prunes stage by stage, each layer to its own count; use --scope layer")
    if criterion == "sparsegpt" and scope != "layer":
        raise ConfigError("--importance sparsegpt prunes each layer to its own exact count; use --scope layer")
    if sequential and criterion in WEIGHT_CRITERIA and not refit:
        raise ConfigError("--sequential re-measures calibration statistics for data-aware methods; use it with "
                          "--importance wanda/activation/apoz/sparsegpt or --recover lstsq")


def sparsify_calibrated(
    model: str | os.PathLike[str] | ModelProto,
    calib: Data,
    *,
    criterion: str = "sparsegpt",
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    scope: str = "layer",
    layer_sparsity: Mapping[str, float] | None = None,
    exclude: Sequence[str] = (),
    min_size: int = 0,
    refit: bool = False,
    sequential: bool = False,
    dense_target: bool = True,
    batch_size: int = 32,
    max_samples: int | None = None,
    provider: str = "cpu",
) -> CalibratedSparsity:
    """Unstructured or N:M sparsity chosen (and repaired) from calibration data, in one shot or stage by stage.

    Args:
        model: path or ``ModelProto`` (not modified).
        calib: calibration data: ``.npz`` path or iterable of feed dicts (an iterable is read once per stage).
        criterion: ``sparsegpt`` (zeros and updates from the input Gram matrix), ``wanda``, ``activation``,
            ``apoz``, or ``magnitude`` (only useful with ``refit`` or ``sequential``).
        sparsity: unstructured: the fraction of each layer's weights set to zero (exact per layer).
        nm: ``(n, m)`` for N:M sparsity instead (keep ``n`` of every ``m``).
        scope: ``layer`` (``global`` only for one-shot weight or Wanda-like scores).
        layer_sparsity, exclude, min_size: as in :func:`onnxprune.sparse.sparsify.sparsify`.
        refit: re-fit the survivors of each layer by masked least squares (``--recover lstsq``).
        sequential: measure each stage on the model already pruned before it (``depth + 1`` passes).
        dense_target: with ``sequential``, SparseGPT and the re-fit aim at each layer's output in the dense
            model (``‖XW − X̃Ŵ‖``, from the cross term of both models' inputs, which runs the dense model beside
            the pruned one in each pass) rather than at the dense weight on the new inputs (``‖X̃W − X̃Ŵ‖``).
        batch_size, max_samples, provider: calibration runs.

    Returns:
        A :class:`CalibratedSparsity`.

    Raises:
        ConfigError: unknown criterion, a global scope with SparseGPT or ``sequential``, a quantized model with
            SparseGPT or a re-fit.
        CalibrationError: bad calibration data.

    Example:
        >>> out = sparsify_calibrated("mlp.onnx", "calib.npz", criterion="sparsegpt", nm=(2, 4))  # doctest: +SKIP
        >>> out.result.sparsity  # doctest: +SKIP
        0.5
    """
    _check(criterion, scope, sequential, refit)
    current = load_model(model, check=False)
    if criterion == "sparsegpt":
        refuse_quantized_sparsegpt(current)
    if refit:
        refuse_quantized(current)
    if sequential and not isinstance(calib, (str, os.PathLike)) and iter(calib) is calib:
        raise ConfigError("sequential calibration reads the data once per stage; pass an .npz path or a list of "
                          "feed dicts, not a one-shot iterator")
    dense = current
    weights = find_prunable_weights(current)
    order = {pw.name: i for i, pw in enumerate(weights)}
    stages = layer_stages(current) if sequential else dict.fromkeys(order, 0)
    start = time.perf_counter()
    results: list[SparsifyResult] = []
    updates: list[SparseGPTUpdate] = []
    passes = 0
    for stage in sorted(set(stages.values())):
        names = [pw.name for pw in weights if stages[pw.name] == stage]
        stage_weights = [pw for pw in weights if pw.name in set(names)]
        only = names if sequential else None
        stats: ActivationStats | None = None
        scores, update = None, None
        if any(_may_prune(pw, exclude, min_size, nm) for pw in stage_weights):  # else no pass: nothing to measure
            reference = dense if sequential and dense_target and stage > 0 else None
            stats = _measure(current, reference, calib, stage_weights, criterion, refit, batch_size, max_samples,
                             provider)
            passes += 1
            scores = sparse_scores(current, stats, criterion=criterion) if criterion in DATA_CRITERIA else None
            update = SparseGPTUpdate(current, stats) if criterion == "sparsegpt" else None
        if nm is None:
            res = sparsify(current, sparsity=sparsity, scope=scope, layer_sparsity=layer_sparsity, exclude=exclude,
                           min_size=min_size, scores=scores, update=update, only=only)
        else:
            res = sparsify_nm(current, n=nm[0], m=nm[1], exclude=exclude, min_size=min_size, scores=scores,
                              update=update, only=only)
        results.append(res)
        if update is not None:
            updates.append(update)
        current = recover_sparse(current, res.model, stats, method="lstsq") if refit and stats else res.model
        log.debug("stage %d: %d weights pruned", stage, len(res.layers))
    seconds = time.perf_counter() - start
    info: dict[str, Any] = {"calibration": {"sequential": sequential, "stages": len(results), "passes": passes,
                                            "dense_target": sequential and dense_target,
                                            "seconds": round(seconds, 3)}}
    if updates:
        info["sparsegpt"] = {"updated": [n for u in updates for n in u.updated],
                             "magnitude_instead": [{"name": s.name, "reason": s.reason}
                                                   for u in updates for s in u.declined]}
    if refit:
        info["recovery"] = "lstsq"
    log.info("%s calibration: %d pass(es) over the data, %.2f s", "sequential" if sequential else "one-shot",
             passes, seconds)
    return CalibratedSparsity(current, _merge(results, order), info)


def _may_prune(pw: PrunableWeight, exclude: Sequence[str], min_size: int, nm: tuple[int, int] | None) -> bool:
    """Whether sparsify may prune ``pw`` (not excluded, not too small, N:M-able), so its stage needs a pass."""
    if matches_any([pw.name, *pw.readers], tuple(exclude)) or pw.numel < min_size:
        return False
    return nm is None or bool(pw.reduction_axes) and pw.reduction_size % nm[1] == 0


def _measure(model: ModelProto, reference: ModelProto | None, calib: Data, weights: Sequence[PrunableWeight],
             criterion: str, refit: bool, batch_size: int, max_samples: int | None, provider: str) -> ActivationStats:
    """One calibration pass for these weights: their readers' input columns (Wanda-like criteria) and
    input Gram matrices (SparseGPT, re-fit), with the cross term against ``reference``'s inputs when given."""
    idx = GraphIndex(model)
    tensors: dict[str, int | None] = {}
    if criterion in DATA_CRITERIA:
        for pw in weights:
            for reader in pw.readers:
                node = idx.nodes_by_name[reader]
                if node.op_type in GRAM_OPS:
                    tensors[node.input[0]] = input_axis(node, idx.opset)
    grams = gram_layers(model, weights) if criterion == "sparsegpt" or refit else []
    if grams and reference is not None:
        return collect_paired_grams(reference, model, calib, layers=grams, tensors=tensors, batch_size=batch_size,
                                    max_samples=max_samples, provider=provider)
    return collect_stats(model, calib, tensors=tensors, gram_for=grams, batch_size=batch_size,
                         max_samples=max_samples, provider=provider)


def _merge(results: list[SparsifyResult], order: Mapping[str, int]) -> SparsifyResult:
    """One account of several stage-wise results: layers in graph order, each skipped weight once."""
    if len(results) == 1:
        return results[0]
    layers = sorted((r for res in results for r in res.layers), key=lambda r: order.get(r.name, len(order)))
    skipped: dict[str, SkippedWeight] = {}
    for res in results:
        for s in res.skipped:
            skipped.setdefault(s.name, s)
    unmatched = set(results[0].unmatched_layer_sparsity)
    for res in results[1:]:
        unmatched &= set(res.unmatched_layer_sparsity)
    return SparsifyResult(
        model=results[-1].model, mode=results[0].mode, layers=tuple(layers), skipped=tuple(skipped.values()),
        unmatched_exclude=results[0].unmatched_exclude,
        unmatched_layer_sparsity=tuple(p for p in results[0].unmatched_layer_sparsity if p in unmatched))
