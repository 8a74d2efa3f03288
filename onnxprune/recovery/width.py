"""Width pruning of the residual stream (``--mode width``): plain channel pruning plus a calibrated re-fit.

What it does: the stream's channels (one group per stream: the embedding or patch projection's output, every
writer's output columns, every reader's input rows, the LayerNorm scales and shifts, positional tables)
are removed consistently across all blocks (:mod:`onnxprune.structured.stream`). Every LayerNormalization
over the stream then normalizes over the kept channels only: a different function, so the result is
**not exact**, and the drift is measured, never claimed away.

Why the re-fit uses the pruned model's inputs: after the cut, a reader sees a re-normalized stream, not the
original one with columns removed. Each reader (MatMul/Gemm with constant weights) is therefore re-solved
by ridge least squares so that, on calibration data, its output from the *pruned* model's activation
matches the *original* reader's output. Readers are fitted one after another in graph order, each on the
activations of the model whose earlier readers are already re-fitted (sequential calibration).
Convolution readers (ConvNeXt's downsampling layers) keep their sliced weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import ModelProto, numpy_helper

from onnxprune.core.errors import ConfigError, UnsupportedModelError
from onnxprune.core.ir import GraphIndex
from onnxprune.recovery.calibrate import iter_feeds, rows_to_weight, weight_rows, with_outputs
from onnxprune.recovery.recover import DEFAULT_RIDGE, SinkCut, layer_bias, set_layer_bias, sink_cuts, solve_spd
from onnxprune.structured.analysis import analyze
from onnxprune.structured.prune import coverage, prune_structured
from onnxprune.structured.stream import freeze_stream_shapes, stream_group_ids, stream_rules

log = logging.getLogger(__name__)

Data = str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class WidthResult:
    """A width-pruned model and what was done (``report`` is JSON-able)."""

    model: ModelProto
    report: dict[str, Any] = field(default_factory=dict)


def prune_width(model: ModelProto, *, ratio: float, calib: Data | None, refit: bool = True,
                importance: str = "l2", dims: Mapping[str, int] | None = None,
                ridge: float = DEFAULT_RIDGE, max_samples: int | None = None) -> WidthResult:
    """Remove ``ratio`` of every prunable residual stream's channels, then re-fit the stream's readers.

    Args:
        model: the model (not modified).
        ratio: share of each stream's channels to remove, in ``[0, 1)``.
        calib: calibration data (npz path or feed dicts); required when ``refit``.
        refit: re-fit the readers (``False`` measures plain slicing).
        importance: channel criterion of the structured mode (weight-only criteria).
        dims: fixed sizes of dynamic input axes for the analysis.

    Raises:
        ConfigError: re-fit without data, or a bad ratio.
        UnsupportedModelError: the model has no prunable stream (the blockers are named).
    """
    if refit and calib is None:
        raise ConfigError("width pruning re-fits the stream's readers on calibration data; pass --calib data.npz")
    frozen = freeze_stream_shapes(model)
    rules = stream_rules()
    dg = analyze(frozen.model, extra_rules=rules, dims=dict(dims) if dims else None)
    ids = stream_group_ids(frozen.model, dg)
    prunable = [g for g in ids if dg.groups[g].prunable]
    if not prunable:
        why = "; ".join(b for g in ids for b in dg.groups[g].blockers[:1]) or "no LayerNormalization over a stream"
        raise UnsupportedModelError(f"no residual stream of this model can be cut by width: {why}")
    result = prune_structured(frozen.model, ratio=0.0, importance=importance, dg=dg, extra_rules=rules,
                              group_ratios={g: ratio for g in prunable})
    keep = result.plan.keep
    report: dict[str, Any] = {
        "exact": False,
        "why_not_exact": "LayerNormalization over the stream normalizes over the kept channels only",
        "streams": [{"group": g, "width_before": dg.groups[g].size, "width_after": int(len(keep[g]))}
                    for g in prunable],
        "streams_blocked": [{"group": g, "width": dg.groups[g].size, "blocker": dg.groups[g].blockers[0]}
                            for g in ids if g not in prunable],
        "params_removed_predicted": int(dg.params_removed(keep)),
        # with the stream's rules, heads and feed-forward groups stay prunable too: what structured + width reach
        "coverage_with_stream": round(coverage(frozen.model, dg, dict(dg.shapes)), 6),
        "shape_reads_frozen": frozen.constants, "reshape_targets_trailing": frozen.trailing,
        "refit": [],
    }
    pruned = result.model
    if refit:
        assert calib is not None
        cuts = [c for c in sink_cuts(frozen.model, dg, result.plan) if c.node.op_type in ("MatMul", "Gemm")]
        pruned, fitted = refit_readers(frozen.model, pruned, cuts, calib, ridge=ridge, max_samples=max_samples)
        report["refit"] = fitted
    return WidthResult(pruned, report)


def stream_coverage(model: ModelProto, *, dims: Mapping[str, int] | None = None) -> float:
    """Share of weighted-layer MACs in prunable groups once the residual stream is a group too.

    Structured mode leaves the stream blocked (LayerNorm normalizes over it), so heads and feed-forward
    neurons alone reach at most half of a transformer's weighted MACs; this is the share that structured
    pruning and ``--mode width`` reach together (the stream part is not exact).
    """
    frozen = freeze_stream_shapes(model)
    dg = analyze(frozen.model, extra_rules=stream_rules(), dims=dict(dims) if dims else None)
    return coverage(frozen.model, dg, dict(dg.shapes))


def _rows(x: np.ndarray, cut: SinkCut, opset: int) -> np.ndarray:
    """A reader's input as ``(rows, K)``: features on the last axis (MatMul, Gemm) or axis 0 (Gemm transA)."""
    from onnxprune.core.ir import attr

    if cut.node.op_type == "Gemm" and attr(cut.node, "transA", opset, 0):
        x = x.T
    return x.reshape(-1, x.shape[-1]).astype(np.float64)


def _collect(model: ModelProto, tensors: list[str], data: Data, max_samples: int | None) -> dict[str, np.ndarray]:
    """Every calibration batch's values of ``tensors``, concatenated along the first axis (rows)."""
    from onnxprune.runtime.session import create_session, run_session

    tensors = list(dict.fromkeys(tensors))  # readers sharing one input (q, k, v) ask for it once each
    probe = with_outputs(model, tensors)
    session = create_session(probe)
    parts: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for feed in iter_feeds(model, data, max_samples=max_samples):
        values = run_session(session, feed, outputs=tensors)
        for t in tensors:
            parts[t].append(values[t])
    return {t: np.concatenate(v, axis=0) for t, v in parts.items()}


def _order(model: ModelProto, cuts: list[SinkCut]) -> list[SinkCut]:
    position = {n.output[0]: i for i, n in enumerate(model.graph.node) if n.output}
    return sorted(cuts, key=lambda c: position.get(c.node.output[0], 0))


def refit_readers(original: ModelProto, pruned: ModelProto, cuts: list[SinkCut], data: Data, *,
                  ridge: float = DEFAULT_RIDGE, max_samples: int | None = None
                  ) -> tuple[ModelProto, list[dict[str, Any]]]:
    """Re-fit each reader in graph order on the pruned model's input so its output matches the original's.

    Solves ``min ‖[X_p 1] [W'; b'] − (X_o W + b)‖² + λ‖W' − W_k‖²`` per reader, with ``X_p`` the reader's
    input in the current pruned model and ``X_o`` in the original. Returns the new model and, per reader,
    the relative output error before and after the fit (on the calibration data).
    """
    out = ModelProto()
    out.CopyFrom(pruned)
    idx_o = GraphIndex(original)
    originals = _collect(original, [c.activation for c in cuts], data, max_samples)
    fitted: list[dict[str, Any]] = []
    for cut in _order(original, cuts):
        idx = GraphIndex(out)
        node = idx.nodes_by_name.get(cut.key)
        if node is None:
            raise ConfigError(f"reader '{cut.key}' is not in the pruned model")
        w_o = idx_o.const_value(cut.node.input[1])
        w_p = idx.const_value(node.input[1])
        if w_o is None or w_p is None:
            continue
        rows_o = weight_rows(cut.node, w_o.astype(np.float64), idx_o.opset)[0]
        n_out = rows_o.shape[0]
        bias_o = layer_bias(idx_o, cut.node, n_out)
        x_o = _rows(originals[cut.activation], cut, idx_o.opset)
        x_p = _rows(_collect(out, [node.input[0]], data, max_samples)[node.input[0]], cut, idx.opset)
        target = (x_o @ rows_o.T + bias_o)[:, cut.keep_out]
        rows_p = weight_rows(node, w_p.astype(np.float64), idx.opset)[0]
        bias_p = layer_bias(idx, node, rows_p.shape[0])
        aug = np.hstack([x_p, np.ones((x_p.shape[0], 1))])
        gram = aug.T @ aug
        k = x_p.shape[1]
        lam = ridge * max(float(np.mean(np.diag(gram)[:k])), 1e-12)
        reg = np.full(k + 1, lam)
        reg[k] = 0.0
        prior = np.vstack([rows_p.T, bias_p[None]])
        sol = solve_spd(gram + np.diag(reg), aug.T @ target + reg[:, None] * prior)
        before = float(np.linalg.norm(aug @ prior - target) / max(np.linalg.norm(target), 1e-30))
        after = float(np.linalg.norm(aug @ sol - target) / max(np.linalg.norm(target), 1e-30))
        if not np.isfinite(sol).all():
            raise UnsupportedModelError(f"re-fit of reader '{cut.key}' gave non-finite weights")
        shape = idx.const_shape(node.input[1])
        assert shape is not None
        value = rows_to_weight(node, sol[:k].T[None], shape, idx.opset).astype(w_p.dtype)
        _set_weight(idx, node, value)
        set_layer_bias(idx, node, sol[k].astype(w_p.dtype), w_p.dtype)
        fitted.append({"layer": cut.key, "rel_error_before": before, "rel_error_after": after})
        log.info("re-fit %s: relative output error %.4f -> %.4f", cut.key, before, after)
    return out, fitted


def _set_weight(idx: GraphIndex, node: Any, value: np.ndarray) -> None:
    """Give ``node`` its own weight initializer holding ``value`` (a tied weight is not changed for others)."""
    name = idx.unique_name(f"{node.name or node.output[0]}_weight")
    idx.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    old = node.input[1]
    node.input[1] = name
    if not any(old in n.input for n in idx.graph.node):
        keep = [t for t in idx.graph.initializer if t.name != old]
        del idx.graph.initializer[:]
        idx.graph.initializer.extend(keep)
