"""``analyze_summary``: the facts ``onnxprune analyze`` prints, as a JSON-able dict.

Kept apart from the CLI so tests and scripts get the same numbers the user sees.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import onnx
from onnx import ModelProto

from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.io import load_model
from onnxprune.core.ir import input_shapes, is_fixed_dim, opset_of
from onnxprune.core.stats import model_stats

log = logging.getLogger(__name__)


def _io_list(model: ModelProto, which: str) -> list[dict[str, Any]]:
    inits = {t.name for t in model.graph.initializer}
    entries = []
    for vi in getattr(model.graph, which):
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if is_fixed_dim(d) else (d.dim_param or "?") for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "?"
        entries.append({"name": vi.name, "dtype": dtype, "shape": shape})
    return entries


#: Above this many bytes of weights, ``analyze`` shows width mode's view only when asked (``--width``): it
#: copies the model twice (measured on a 20 MB BERT: 2.7 s / 132 MB peak without it, 4.9 s / 169 MB with it).
WIDTH_VIEW_BYTES = 256 << 20


def _width(model: ModelProto, dims: dict[str, int] | None, with_width: bool | None) -> dict[str, Any]:
    """What ``--mode width`` reaches (:func:`onnxprune.recovery.stream_view.width_view`), or why not shown."""
    from onnxprune.core.io import model_nbytes

    if with_width is False or (with_width is None and model_nbytes(model) > WIDTH_VIEW_BYTES):
        return {"skipped": "pass --width to see what --mode width reaches (it copies the model twice)"}
    from onnxprune.recovery.stream_view import width_view

    try:  # the stream a group too (not exact by design)
        return width_view(model, dims=dims)
    except OnnxPruneError as exc:
        return {"error": str(exc)}


def analyze_summary(source: str | os.PathLike[str] | ModelProto, *, dims: dict[str, int] | None = None,
                    with_groups: bool = True, with_width: bool | None = None) -> dict[str, Any]:
    """Parameters, MACs at batch 1, op histogram, prunable weights, opset, I/O and channel groups.

    ``with_width``: add what ``--mode width`` reaches on a model with a norm over its channels (``None``:
    for models up to :data:`WIDTH_VIEW_BYTES` of weights)."""
    model = load_model(source)
    from onnxprune.core.batch_axes import counted_batch
    from onnxprune.core.weights import find_prunable_weights
    from onnxprune.runtime.dims import DimResolution, resolve_dims

    # MACs at sizes the model accepts, never at a silent 1 (or -1) for a dynamic axis: chosen ones are said.
    try:
        res = resolve_dims(model, dims=dims, required=False)
    except OnnxPruneError as exc:  # an input onnxprune cannot feed (a sequence): counted as given
        log.info("no sizes chosen for dynamic inputs: %s", exc)
        res = DimResolution(dims=dict(dims or {}))
    dims = res.dims
    stats = model_stats(model, dims=dims)
    summary: dict[str, Any] = {
        "opset": opset_of(model),
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": _io_list(model, "input"),
        "outputs": _io_list(model, "output"),
        "params": stats.params,
        "nonzero_params": stats.nonzero_params,
        "macs": stats.macs,
        "macs_batch": counted_batch(model, dims),
        "dims_assumed": res.report(),
        "macs_by_node": stats.macs_by_node,
        "op_histogram": stats.op_histogram,
        "prunable_weights": [
            {"name": w.name, "shape": list(w.shape), "readers": list(w.readers)}
            for w in find_prunable_weights(model)
        ],
        "dynamic_inputs": {k: None if v is None else list(v) for k, v in input_shapes(model).items()
                           if v is None or any(not isinstance(d, int) for d in v)},
    }
    if with_groups:
        try:
            from onnxprune.structured.prune import describe_groups

            summary.update(describe_groups(model, dims=dims))
        except OnnxPruneError as exc:
            summary["analysis_error"] = str(exc)
        from onnxprune.structured.depth import residual_joins
        from onnxprune.structured.fused_stream import FUSED_NORMS

        if any(n.op_type in ("LayerNormalization", "ReduceMean") + FUSED_NORMS for n in model.graph.node):
            summary["width"] = _width(model, dims, with_width)
        summary["residual_blocks"] = [
            {"add": j.add, "start": j.start, "stream": j.stream, "kind": j.kind, "nodes": j.nodes,
             "removable": j.branch is not None, "last": j.branch.last if j.branch else None,
             "score": j.branch.score if j.branch else None, "why": j.why}
            for j in residual_joins(model)]
    return summary
