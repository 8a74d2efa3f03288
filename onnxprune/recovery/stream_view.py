"""What ``--mode width`` reaches on a model, side by side with what stays uncovered and why.

Why: "coverage 0.80" alone hides whether the rest is a limitation of ours (an op without a rule, a shape
read we cannot follow) or the model's interface (the vocabulary axis of an LM head's logits, a
classifier's classes, the colour channels the first convolution reads), which no mode may cut without
changing what the model takes or gives. :func:`width_view` gives both numbers (all weighted MACs, and
MACs excluding interface sides) and the uncovered sides grouped by reason, on the model as the width mode
prepares it: run-time weights folded (as the pipeline does), static width reads frozen, a graph output that
is the stream kept at full width by an appended projection, whose MACs count like any layer's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onnx import ModelProto

from onnxprune.recovery.width import frozen_stream, projection_report
from onnxprune.structured.analysis import analyze
from onnxprune.structured.coverage_sides import interface_sides, layer_sides
from onnxprune.structured.stream import stream_group_ids, stream_rules


def width_view(model: ModelProto, *, dims: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Coverage of heads + feed-forward + stream, with and without interface sides, and the uncovered sides.

    Returns a JSON-able dict: ``coverage`` (share of all weighted MACs), ``coverage_without_interface``
    (interface sides left out of the total), ``interface_share``, ``outputs_kept_full_width`` (with
    ``projection_share``: the appended layers' MACs as a share of the total), ``untied`` (a tied LM head given
    its own weight for the cut, :mod:`onnxprune.structured.untie`; the prune ties it back,
    :mod:`onnxprune.structured.retie`), ``uncovered`` (one entry per side and
    reason: ``share``, ``layers``, ``examples``, ``interface``).
    """
    from onnxprune.core.fold import fold_constants
    from onnxprune.runtime.session import run_constant_graph

    dims = dict(dims) if dims else None
    folded = fold_constants(model, run_constant_graph).model
    frozen = frozen_stream(folded, dims=dims)
    m = frozen.model
    dg = analyze(m, extra_rules=stream_rules(), dims=dims)
    sides = layer_sides(m, dg, dict(dg.shapes))
    total = sum(s.macs for s in sides) or 1.0
    interface = interface_sides(m, dg, sides, stream_group_ids(m, dg))
    covered = sum(s.macs for s in sides if s.covered)
    outside = sum(s.macs for s in sides if (s.node, s.side) in interface)
    projected = {n for _, n, _ in frozen.projections}
    grouped: dict[tuple[str, str, bool], list] = {}
    for s in sides:
        if not s.covered:
            key = (s.side, s.blocker, (s.node, s.side) in interface)
            grouped.setdefault(key, []).append(s)
    uncovered = [{"side": side, "reason": why, "interface": iface, "share": round(sum(s.macs for s in v) / total, 6),
                  "layers": len(v), "examples": [s.node for s in v[:3]]}
                 for (side, why, iface), v in grouped.items()]
    uncovered.sort(key=lambda u: -u["share"])
    return {
        "coverage": round(covered / total, 6),
        "coverage_without_interface": round(covered / max(total - outside, 1e-30), 6),
        "interface_share": round(outside / total, 6),
        "outputs_kept_full_width": projection_report(frozen.projections),
        "projection_share": round(sum(s.macs for s in sides if s.node in projected) / total, 6),
        "untied": list(frozen.untied),
        "uncovered": uncovered,
    }
