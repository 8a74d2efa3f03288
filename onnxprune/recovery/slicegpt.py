"""Rotate and slice the residual stream (SliceGPT) with Q from the PCA of its calibration activations.

Why PCA: after the exact rotation (:mod:`onnxprune.structured.rotate`), the stream's coordinates are its
principal directions ordered by variance, so slicing the last ones removes the least signal. One global Q is
used for the whole stream (every norm's input pooled), as one stream group has one basis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxprune.core.errors import ConfigError
from onnxprune.core.io import release_memory
from onnxprune.recovery.reader_refit import Data, collect, refit_readers
from onnxprune.recovery.recover import sink_cuts
from onnxprune.recovery.tied_head import tie_heads_back
from onnxprune.recovery.width import frozen_stream, projection_report, refit_cuts
from onnxprune.structured.analysis import analyze
from onnxprune.structured.plan import PrunePlan
from onnxprune.structured.rotate import LINEAR_PASS, prepare_rotation, rotate, rotation_axes, to_rms
from onnxprune.structured.stream import stream_group_ids, stream_rules
from onnxprune.structured.stream_entries import with_stream_entries
from onnxprune.structured.surgery import apply_plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceResult:
    """The sliced model, the exact rotated model before slicing (for the proof), and a JSON-able report."""

    model: ModelProto
    rotated: ModelProto
    report: dict[str, Any] = field(default_factory=dict)


def stream_basis(model: ModelProto, tensors: tuple[str, ...], data: Data, *,
                 max_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors (columns, by decreasing variance) and eigenvalues of the stream's second moment."""
    values = collect(model, list(tensors), data, max_samples)
    cov: np.ndarray | None = None
    for v in values.values():
        x = v.reshape(-1, v.shape[-1]).astype(np.float64)
        cov = x.T @ x if cov is None else cov + x.T @ x
    assert cov is not None
    w, vecs = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    return vecs[:, order], w[order]


def slice_stream(model: ModelProto | list[ModelProto], *, ratio: float, calib: Data, refit: bool = True,
                 max_samples: int | None = None, refit_tied: bool = True) -> SliceResult:
    """Remove ``ratio`` of a pre-norm model's stream width by rotation + slicing (+ optional reader re-fit).

    ``model`` given as a one-element list is handed over: the list is emptied once the rotation is prepared
    and known possible (nothing after reads the input), so a caller that kept no other reference frees the
    input's memory before calibration, rotation, slicing and re-fit. A refusal leaves it in the list.

    Raises:
        ConfigError: ``ratio`` outside ``[0, 1)``.
        UnsupportedModelError: rotation is impossible (post-norm, per-channel ops, several streams).
    """
    if not 0 <= ratio < 1:
        raise ConfigError(f"ratio must be in [0, 1), got {ratio}")
    owned = model if isinstance(model, list) else [model]
    del model
    frozen = frozen_stream(owned[0])  # folded shape pieces first, a stream output projected (see frozen_stream)
    projections, untied, heads = frozen.projections, frozen.untied, frozen.untied_heads
    # a stream written by a nonlinearity (Whisper's GELU) starts at an appended identity projection instead
    prep, entries = with_stream_entries(frozen.model, prepare_rotation, LINEAR_PASS)
    del frozen
    rotation_axes(prep)  # the last refusal: from here on the input is not read again
    owned.clear()  # (a handed-over one is freed here, before calibration runs)
    release_memory()
    q, variance = stream_basis(prep.model, prep.stream, calib, max_samples=max_samples)
    norms, width = prep.norms, prep.width
    rotated = rotate(prep, q)
    del prep  # each intermediate model is dropped as soon as the next exists: they are as big as the input
    release_memory()
    keep = max(1, width - int(round(ratio * width)))
    dg = analyze(rotated, extra_rules=stream_rules())
    (group,) = [g for g in stream_group_ids(rotated, dg) if dg.groups[g].prunable]
    plan = PrunePlan(fingerprint=dg.fingerprint, keep={group: np.arange(keep)}, sizes={group: width},
                     criterion="pca")
    sliced = to_rms(apply_plan(rotated, plan, dg=dg, extra_rules=stream_rules()), norms, width, inplace=True)
    skipped: dict[str, Any] = {}  # refit_cuts says here which heads it leaves out
    cuts = refit_cuts(sink_cuts(rotated, dg, plan), heads, refit_tied, skipped) if refit else []
    exact = to_rms(rotated, norms, width, inplace=True)  # the cuts' nodes (readers) stay in it
    del rotated
    report: dict[str, Any] = {
        "exact": False, "rotation_exact": True, "width_before": width, "width_after": keep,
        "variance_kept": float(variance[:keep].sum() / max(variance.sum(), 1e-30)),
        "params_removed_by_slicing": int(dg.params_removed(plan.keep)), "refit": [],
        "outputs_kept_full_width": projection_report(projections), "untied": list(untied),
        "untied_heads": [list(h) for h in heads], **skipped,
        "stream_entries": [{"after": e.tensor, "projection": e.node, "width": e.width,
                            "note": "appended width x k MatMul; its MACs count in macs_after"} for e in entries]}
    if refit:
        # handed over without a reference left here, so the re-fit can free it once copied
        unfitted = [sliced]
        del sliced
        sliced, report["refit"] = refit_readers(exact, unfitted.pop(), cuts, calib, max_samples=max_samples)
    return SliceResult(sliced, exact, report)


def prune_stream_width(model: ModelProto | list[ModelProto], *, ratio: float, calib: Data | None,
                       refit: bool = True, importance: str | None = None, dims: dict[str, int] | None = None,
                       untie: bool = False, refit_tied: bool = False
                       ) -> tuple[ModelProto, ModelProto | None, dict[str, Any]]:
    """``--mode width``: rotate + slice where the model allows it (pre-norm), else plain channel pruning.

    A criterion asked for by name (``importance``) means channels chosen by it: plain pruning. Returns the
    pruned model, the exact rewritten model before slicing (rotated; for plain pruning: shape reads frozen, an
    output projection appended, a tied head untied) and the report, whose
    ``method`` says which was used and, for plain pruning, why rotation was not. A one-element list hands
    the model over (see :func:`slice_stream`): freed once rotation is known possible, else kept for plain pruning.
    A tied LM head stays tied (:mod:`onnxprune.recovery.tied_head`) unless ``untie``; it is re-fitted (then tied
    back through an adapter) only with ``refit_tied`` or ``untie``.
    """
    from onnxprune.core.errors import UnsupportedModelError
    from onnxprune.recovery.width import prune_width

    if calib is None:
        raise ConfigError("width pruning is not exact and needs calibration data; pass --calib data.npz")
    owned = model if isinstance(model, list) else [model]
    del model
    why = f"--importance {importance} chooses the channels" if importance else ""
    if not why:
        try:
            result = slice_stream(owned, ratio=ratio, calib=calib, refit=refit, refit_tied=untie or refit_tied)
            tie_heads_back(result.model, result.rotated, result.report, untie=untie)
            return result.model, result.rotated, {"method": "rotate", **result.report}
        except UnsupportedModelError as exc:
            if not owned:  # refused after the input was released: nothing left to prune plainly
                raise
            why = str(exc)
    log.info("width: plain channel pruning (%s)", why)
    plain = prune_width(owned[0], ratio=ratio, calib=calib, refit=refit, importance=importance or "l2", dims=dims,
                        keep_prepared=True, refit_tied=untie or refit_tied)
    tie_heads_back(plain.model, plain.prepared, plain.report, untie=untie)
    return plain.model, plain.prepared, {"method": "plain", "why_not_rotated": why, **plain.report}
