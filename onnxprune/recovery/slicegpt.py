"""Rotate and slice the residual stream (SliceGPT) with Q from the PCA of its calibration activations.

Why PCA: after the exact rotation (:mod:`onnxprune.structured.rotate`), the stream's coordinates are its
principal directions ordered by variance, so slicing the last ones removes the least signal. One global Q is
used for the whole stream (every norm's input pooled), as one stream group has one basis.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto

from onnxprune.core.errors import ConfigError, UnsupportedModelError
from onnxprune.core.fold import fold_constants
from onnxprune.core.io import load_model, load_structure, release_memory, save_model
from onnxprune.core.ir import GraphIndex
from onnxprune.core.weights import copy_model_without_weights
from onnxprune.recovery.reader_refit import Data, collect, refit_readers
from onnxprune.recovery.recover import sink_cuts
from onnxprune.recovery.tied_head import tie_heads_back
from onnxprune.recovery.width import frozen_stream, open_stream, projection_report, refit_cuts
from onnxprune.structured.analysis import analyze
from onnxprune.structured.fused_stream import unfuse_skip_norms
from onnxprune.structured.plan import PrunePlan
from onnxprune.structured.rotate import LINEAR_PASS, Prepared, prepare_rotation, rotate, rotation_axes, to_rms
from onnxprune.structured.stream import FrozenShapes, stream_group_ids, stream_rules
from onnxprune.structured.stream_entries import Entry, with_stream_entries
from onnxprune.structured.surgery import apply_plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceResult:
    """The sliced model, the exact rotated model before slicing (for the proof), and a JSON-able report.

    ``rotated`` is a file (external data) in the ``scratch`` folder :func:`slice_stream` was given, else the
    model itself.
    """

    model: ModelProto
    rotated: ModelProto | Path
    report: dict[str, Any] = field(default_factory=dict)


def fold_shape_pieces(model: ModelProto, source: Mapping[str, TensorProto]) -> ModelProto:
    """The integer constant folding of :func:`~onnxprune.recovery.width.frozen_stream`, on a frozen copy
    made without its weights' data (``source`` holds it): the fold :func:`prepare_rotation` is given."""
    from onnxprune.runtime.session import run_constant_graph

    return fold_constants(model, run_constant_graph, integers_only=True, source=source).model


def _prepare(model: ModelProto) -> tuple[Prepared, tuple[tuple[str, str, int], ...], tuple[str, ...],
                                         tuple[tuple[str, str], ...], tuple[Entry, ...]]:
    """:func:`prepare_rotation` with width mode's exact rewrites done inside its fold, on the copy without
    weight data: integer shape pieces folded, then :func:`~onnxprune.recovery.width.open_stream` (a tied LM
    head untied, a stream output projected), as :func:`~onnxprune.recovery.width.frozen_stream` does on a
    full copy. Returns the prepared model, the output projections, the untied tables, the untied heads
    (``(head, table)``) and the stream entries.

    Why inside the fold: the input is never copied whole (see :func:`prepare_rotation`). A stream written by
    a nonlinearity (Whisper's GELU) is tried again on a full rewritten copy with entry projections appended,
    so a caller's model is never changed.
    """
    found: list[FrozenShapes] = []

    def fold(frozen: ModelProto, source: Mapping[str, TensorProto]) -> ModelProto:
        folded = fold_shape_pieces(frozen, source)
        unfuse_skip_norms(folded)  # onnxruntime's fused norms as the ops they fused: those rotate
        opened = open_stream(FrozenShapes(folded, 0, 0), source=source)
        found.append(opened)
        return opened.model

    entries: tuple[Entry, ...] = ()
    try:
        prep = prepare_rotation(model, fold=fold)
    except UnsupportedModelError as exc:
        if "not linear" not in str(exc):
            raise
        found.append(frozen_stream(model))  # a full copy, rewritten like the fold above: entries are found on it
        unfuse_skip_norms(found[-1].model)
        prep, entries = with_stream_entries(found[-1].model, prepare_rotation, LINEAR_PASS)
    last = found[-1]
    return prep, last.projections, last.untied, last.untied_heads, entries


def stream_basis(model: ModelProto, tensors: tuple[str, ...], data: Data, *, max_samples: int | None = None,
                 data_dir: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors (columns, by decreasing variance) and eigenvalues of the stream's second moment
    (``data_dir``: where the external data of a model loaded without it is, see :func:`collect`)."""
    values = collect(model, list(tensors), data, max_samples, data_dir=data_dir)
    cov: np.ndarray | None = None
    for v in values.values():
        x = v.reshape(-1, v.shape[-1]).astype(np.float64)
        cov = x.T @ x if cov is None else cov + x.T @ x
    assert cov is not None
    w, vecs = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    return vecs[:, order], w[order]


def slice_stream(model: ModelProto | list[ModelProto], *, ratio: float, calib: Data, refit: bool = True,
                 max_samples: int | None = None, scratch: str | os.PathLike[str] | None = None,
                 refit_tied: bool = True) -> SliceResult:
    """Remove ``ratio`` of a pre-norm model's stream width by rotation + slicing (+ optional reader re-fit).

    ``model`` given as a one-element list is handed over: the list is emptied once the rotation is prepared
    and known possible (nothing after reads the input), so a caller that kept no other reference frees the
    input's memory before calibration, rotation, slicing and re-fit. A refusal leaves it in the list.

    The exact rotated model (the re-fit's reference and the rotation proof's candidate) is written to a file
    with external data as soon as the slicing has read it, and read from there by path: onnxruntime maps
    its weights, the re-fit reads one reader's weight at a time, so it is not in memory next to the sliced
    model. The prepared model before it goes through a file there too (removed once rotated), so the
    prepared and rotated models are never in memory together. ``scratch``: the folder for those files; the
    rotated one is then returned as ``rotated`` (the caller removes it); without one a temporary folder is
    used and the rotated model is loaded back at the end.

    Raises:
        ConfigError: ``ratio`` outside ``[0, 1)``.
        UnsupportedModelError: rotation is impossible (post-norm, per-channel ops, several streams).
    """
    if not 0 <= ratio < 1:
        raise ConfigError(f"ratio must be in [0, 1), got {ratio}")
    owned = model if isinstance(model, list) else [model]
    del model
    prep, projections, untied, heads, entries = _prepare(owned[0])  # frozen, folded: copies without weight data
    axes = rotation_axes(prep)  # the last refusal: from here on the input is not read again
    owned.clear()  # (a handed-over one is freed here, before calibration runs)
    release_memory()
    norms, width = prep.norms, prep.width
    with contextlib.ExitStack() as stack:
        folder = Path(scratch) if scratch is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="onnxprune-rotated-", ignore_cleanup_errors=True)))
        # The prepared model goes to a file too: calibration runs it from there, and the rotation reads each
        # weight it rotates from there, so the rotated model is built without the prepared one in memory.
        prepared = save_model(prep.model, _free_path(folder, "prepared.onnx"), external_data=True)
        prep = replace(prep, model=copy_model_without_weights(prep.model, axes))
        release_memory()
        on_disk = load_structure(prepared)
        q, variance = stream_basis(on_disk, prep.stream, calib, max_samples=max_samples, data_dir=folder)
        release_memory()  # the statistics' float64 temporaries: freed, but held by the heap until trimmed
        rotated = rotate(prep, q, values=GraphIndex(on_disk, data_dir=folder))
        del prep, on_disk
        _remove_model_file(prepared)
        release_memory()
        keep = max(1, width - int(round(ratio * width)))
        dg = analyze(rotated, extra_rules=stream_rules())
        (group,) = [g for g in stream_group_ids(rotated, dg) if dg.groups[g].prunable]
        plan = PrunePlan(fingerprint=dg.fingerprint, keep={group: np.arange(keep)}, sizes={group: width},
                         criterion="pca")
        sliced = to_rms(apply_plan(rotated, plan, dg=dg, extra_rules=stream_rules()), norms, width, inplace=True)
        skipped: dict[str, Any] = {}  # refit_cuts says here which heads it leaves out
        # detached from the rotated model: a node still referenced keeps that whole model's memory alive
        cuts = [replace(c, node=_copy_node(c.node)) for c in
                refit_cuts(sink_cuts(rotated, dg, plan), heads, refit_tied, skipped)] if refit else []
        report: dict[str, Any] = {
            "exact": False, "rotation_exact": True, "width_before": width, "width_after": keep,
            "variance_kept": float(variance[:keep].sum() / max(variance.sum(), 1e-30)),
            "params_removed_by_slicing": int(dg.params_removed(plan.keep)), "refit": [],
            "outputs_kept_full_width": projection_report(projections), "untied": list(untied),
            "untied_heads": [list(h) for h in heads], **skipped,
            "stream_entries": [{"after": e.tensor, "projection": e.node, "width": e.width,
                                "note": "appended width x k MatMul; its MACs count in macs_after"} for e in entries]}
        del dg
        exact = to_rms(rotated, norms, width, inplace=True)  # the cuts' nodes (readers) stay in it
        del rotated
        release_memory()
        reference = save_model(exact, _free_path(folder, "rotated.onnx"), external_data=True)
        del exact
        release_memory()
        if refit:
            # handed over without a reference left here, so the re-fit can free it once copied
            unfitted = [sliced]
            del sliced
            sliced, report["refit"] = refit_readers(reference, unfitted, cuts, calib, max_samples=max_samples)
        rotated_out: ModelProto | Path = reference if scratch is not None else load_model(reference, check=False)
    return SliceResult(sliced, rotated_out, report)


def _remove_model_file(path: Path) -> None:
    """Remove a scratch model and its data file (:func:`save_model`'s name for it), now read by nothing."""
    for p in (path, path.with_name(path.name + ".data")):
        p.unlink(missing_ok=True)


def _copy_node(node: NodeProto) -> NodeProto:
    out = NodeProto()
    out.CopyFrom(node)
    return out


def _free_path(folder: Path, name: str) -> Path:
    """``folder / name``, or ``folder / '<k>-name'`` for the first ``k`` not taken (a scratch folder may hold
    an earlier run's file)."""
    path, k = folder / name, 0
    while path.exists():
        k += 1
        path = folder / f"{k}-{name}"
    return path


def prune_stream_width(model: ModelProto | list[ModelProto], *, ratio: float, calib: Data | None,
                       refit: bool = True, importance: str | None = None, dims: dict[str, int] | None = None,
                       untie: bool = False, refit_tied: bool = False, scratch: str | os.PathLike[str] | None = None
                       ) -> tuple[ModelProto, ModelProto | Path | None, dict[str, Any]]:
    """``--mode width``: rotate + slice where the model allows it (pre-norm), else plain channel pruning.

    A criterion asked for by name (``importance``) means channels chosen by it: plain pruning. Returns the
    pruned model, the exact rewritten model before slicing (rotated, a file in ``scratch`` when given, see
    :func:`slice_stream`; for plain pruning: shape reads frozen, an output projection appended, a tied head
    untied) and the report, whose
    ``method`` says which was used and, for plain pruning, why rotation was not. A one-element list hands
    the model over (see :func:`slice_stream`): freed once rotation is known possible, else kept for plain pruning.
    A tied LM head stays tied (:mod:`onnxprune.recovery.tied_head`) unless ``untie``; it is re-fitted (then tied
    back through an adapter) only with ``refit_tied`` or ``untie``.
    """
    from onnxprune.core.errors import UnsupportedModelError
    from onnxprune.recovery.width import prune_width, quantized_width

    if calib is None:
        raise ConfigError("width pruning is not exact and needs calibration data; pass --calib data.npz")
    owned = model if isinstance(model, list) else [model]
    del model
    why = f"--importance {importance} chooses the channels" if importance else ""
    why = why or quantized_width(owned[0], refit=refit)
    # rotation writes these as Add + RMSNorm in primitives (structured/fused_stream.py): the report says so
    fused = [n.name for n in owned[0].graph.node if n.op_type == "SkipLayerNormalization"]
    if not why:
        try:
            result = slice_stream(owned, ratio=ratio, calib=calib, refit=refit, refit_tied=untie or refit_tied,
                                  scratch=scratch)
            tie_heads_back(result.model, result.rotated, result.report, untie=untie)
            unfused = {"unfused_norms": fused} if fused else {}
            return result.model, result.rotated, {"method": "rotate", **unfused, **result.report}
        except UnsupportedModelError as exc:
            if not owned:  # refused after the input was released: nothing left to prune plainly
                raise
            why = str(exc)
    log.info("width: plain channel pruning (%s)", why)
    plain = prune_width(owned[0], ratio=ratio, calib=calib, refit=refit, importance=importance or "l2", dims=dims,
                        keep_prepared=True, refit_tied=untie or refit_tied)
    tie_heads_back(plain.model, plain.prepared, plain.report, untie=untie)
    return plain.model, plain.prepared, {"method": "plain", "why_not_rotated": why, **plain.report}
