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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from onnx import ModelProto, TensorProto

from onnxprune.core.errors import ConfigError, UnsupportedModelError
from onnxprune.core.ir import GraphIndex
from onnxprune.core.quant import quantized_data
from onnxprune.recovery.reader_refit import Data, refit_readers
from onnxprune.recovery.recover import PACKED_READERS, refuse_quantized, sink_cuts
from onnxprune.recovery.solvers import DEFAULT_RIDGE
from onnxprune.structured.analysis import analyze
from onnxprune.structured.prune import coverage, prune_structured
from onnxprune.structured.stream import FrozenShapes, freeze_stream_shapes, stream_group_ids, stream_rules

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WidthResult:
    """A width-pruned model and what was done (``report`` is JSON-able)."""

    model: ModelProto
    report: dict[str, Any] = field(default_factory=dict)
    #: the exactly rewritten model the cut was made on (frozen shape reads, an output projection, an untied
    #: head), kept when asked (``keep_prepared``) so a caller can prove the rewrites against the input
    prepared: ModelProto | None = None


def prune_width(model: ModelProto, *, ratio: float, calib: Data | None, refit: bool = True,
                importance: str = "l2", dims: Mapping[str, int] | None = None,
                ridge: float = DEFAULT_RIDGE, max_samples: int | None = None,
                keep_prepared: bool = False, refit_tied: bool = True) -> WidthResult:
    """Remove ``ratio`` of every prunable residual stream's channels, then re-fit the stream's readers.

    Args:
        model: the model (not modified).
        ratio: share of each stream's channels to remove, in ``[0, 1)``.
        calib: calibration data (npz path or feed dicts); required when ``refit``.
        refit: re-fit the readers (``False`` measures plain slicing).
        importance: channel criterion of the structured mode (weight-only criteria).
        dims: fixed sizes of dynamic input axes for the analysis.
        keep_prepared: return the exactly rewritten model before the cut as ``result.prepared``.
        refit_tied: re-fit an LM head untied from its embedding table too (``False``: it keeps the cut
            table's transpose, so it can be tied back exactly, :mod:`onnxprune.recovery.tied_head`).

    Raises:
        ConfigError: re-fit without data, a re-fit of a quantized model (:func:`quantized_width`), or a bad
            ratio.
        UnsupportedModelError: the model has no prunable stream (the blockers are named).
    """
    quantized_width(model, refit=refit)
    if refit and calib is None:
        raise ConfigError("width pruning re-fits the stream's readers on calibration data; pass --calib data.npz")
    frozen = frozen_stream(model, dims=dims)
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
        # against the input model: an appended output projection's weights and an untied table are new ones
        "params_removed_predicted": int(dg.params_removed(keep)) - added_params(frozen),
        # with the stream's rules, heads and feed-forward groups stay prunable too: what structured + width reach
        "coverage_with_stream": round(coverage(frozen.model, dg, dict(dg.shapes)), 6),
        "shape_reads_frozen": frozen.constants, "reshape_targets_trailing": frozen.trailing,
        "outputs_kept_full_width": projection_report(frozen.projections), "untied": list(frozen.untied),
        "untied_heads": [list(h) for h in frozen.untied_heads],
        "refit": [],
    }
    pruned = result.model
    if refit:
        assert calib is not None
        cuts = refit_cuts(sink_cuts(frozen.model, dg, result.plan), frozen.untied_heads, refit_tied, report)
        unfitted = [pruned]  # handed over with no reference left here: the re-fit frees it once copied
        del pruned, result
        pruned, fitted = refit_readers(frozen.model, unfitted, cuts, calib, ridge=ridge,
                                       max_samples=max_samples)
        report["refit"] = fitted
    return WidthResult(pruned, report, frozen.model if keep_prepared else None)


def quantized_width(model: ModelProto, *, refit: bool) -> str:
    """Why the stream of a quantized (QDQ) model is not rotated ('' for a float model); refuses a re-fit.

    Width pruning a QDQ model treats it as structured mode does: the int8 weights are cut in their integer
    storage with their per-channel scales, never turned into float. The re-fit computes float weights, so it
    is refused with the same line as structured recovery (the readers' re-fit silently fitted nothing before).
    Rotation multiplies every writer and reader by an orthogonal matrix, which int8 weights cannot hold
    exactly, so a quantized stream is pruned plainly (not exact, the drift is measured).

    Raises:
        ConfigError: ``refit`` on a quantized model; names ``--recover none``.
    """
    if not quantized_data(GraphIndex(model)):
        return ""
    if refit:
        refuse_quantized(model, doing="width pruning re-fits the stream's readers in float",
                         fix="pass --recover none (plain width pruning of the integer weights, not exact), or "
                             "prune the float model and quantize it afterwards")
    return ("the model is quantized: a rotation cannot keep its integer weights exact (plain width pruning cuts "
            "them in place)")


def refit_cuts(cuts: list[Any], heads: tuple[tuple[str, str], ...], refit_tied: bool,
               report: dict[str, Any]) -> list[Any]:
    """The cuts whose readers are re-fitted: MatMul/Gemm ones, less an untied LM head unless ``refit_tied``
    (a head re-fitted on its own no longer equals its table's transpose; ``report["refit_skipped"]`` says)."""
    skip = set() if refit_tied else {h for h, _ in heads}
    if skip:
        why = "LM head tied to the embedding table: it keeps the cut table's transpose (--untie-embeddings " \
              "re-fits it on its own)"
        report["refit_skipped"] = [{"node": h, "why": why} for h in sorted(skip)]
    return [c for c in cuts if c.node.op_type in ("MatMul", "Gemm") + PACKED_READERS and c.node.name not in skip]


def frozen_stream(model: ModelProto, *, dims: Mapping[str, int] | None = None) -> FrozenShapes:
    """:func:`~onnxprune.structured.stream.freeze_stream_shapes`, then constant folding of what it made
    constant, then a tied LM head untied, then an identity projection appended behind a graph output that is
    the stream.

    Why fold: freezing replaces a static ``Shape`` read of the stream's width by a constant, but the pieces
    computed from it (``Unsqueeze`` → ``Concat`` into a reshape target, as GPT-2's Conv1D writes) stay
    nodes; folded, they become constant target pieces the width rules rewrite. Only integer (shape) values
    are folded: a float computed from a shape (an attention scale) stays a recipe. Why the projection: an
    encoder's last hidden state keeps its width while the stream inside shrinks
    (:mod:`onnxprune.structured.stream_outputs`). Why untie: an LM head that reads the embedding table
    transposed at run time blocks the stream (:mod:`onnxprune.structured.untie`). Every step is exact.
    """
    from onnxprune.core.fold import fold_constants
    from onnxprune.runtime.session import run_constant_graph

    frozen = freeze_stream_shapes(model)
    folded = fold_constants(frozen.model, run_constant_graph, integers_only=True).model  # a fresh model: ours
    return open_stream(replace(frozen, model=folded), dims=dims)


def open_stream(frozen: FrozenShapes, *, dims: Mapping[str, int] | None = None,
                source: Mapping[str, TensorProto] | None = None) -> FrozenShapes:
    """The exact rewrites after :func:`frozen_stream`'s fold, in place on ``frozen.model`` (the caller's): a
    tied LM head untied (and stored ties found), an identity projection behind a stream output. ``source``:
    the data of weights ``frozen.model`` holds without it (the rotation's data-less copies,
    :func:`~onnxprune.structured.rotate.prepare_rotation`)."""
    from onnxprune.structured.stream_outputs import project_stream_outputs
    from onnxprune.structured.untie import find_stored_ties, untie_transposed_weights

    folded = frozen.model
    copies = untie_transposed_weights(folded, source=source)  # new weights (said in the report)
    made = {c for c, _, _ in copies}  # (a copy just made is a stored tie too: not listed twice)
    stored = find_stored_ties(folded, source=source)  # legacy export, small fold
    heads = copies + tuple(h for h in stored if h[0] not in made)
    opened = project_stream_outputs(folded, dims=dims)
    return replace(frozen, model=opened.model, projections=opened.projections,
                   untied=tuple(dict.fromkeys(c for c, _, _ in copies)),
                   untied_heads=tuple((h, t) for _, t, h in heads))


def projection_report(projections: tuple[tuple[str, str, int], ...]) -> list[dict[str, Any]]:
    """The report's entry for outputs kept at full width by an appended projection (JSON-able)."""
    return [{"output": o, "projection": n, "width": w,
             "note": "appended k x width MatMul (k: the stream's kept width); its MACs count in macs_after"}
            for o, n, w in projections]


def added_params(frozen: FrozenShapes) -> int:
    """Parameters the preparation added at full width: output projections, untied tables."""
    sizes = {t.name: int(np.prod(t.dims)) for t in frozen.model.graph.initializer if t.name in frozen.untied}
    return sum(w * w for _, _, w in frozen.projections) + sum(sizes.values())


def stream_coverage(model: ModelProto, *, dims: Mapping[str, int] | None = None) -> float:
    """Share of weighted-layer MACs in prunable groups once the residual stream is a group too.

    Structured mode leaves the stream blocked (LayerNorm normalizes over it), so heads and feed-forward
    neurons alone reach at most half of a transformer's weighted MACs; this is the share that structured
    pruning and ``--mode width`` reach together (the stream part is not exact), on the model as the pipeline
    prepares it (run-time weights folded), an appended output projection counted
    (:func:`onnxprune.recovery.stream_view.width_view` lists what stays uncovered and why).
    """
    from onnxprune.recovery.stream_view import width_view

    return float(width_view(model, dims=dims)["coverage"])
