"""MACs and parameters of a cut model without building it.

Why this module exists: budgets and sensitivity need the cost of hundreds of candidate cuts. Building
each candidate (``apply_plan``) and re-inferring its shapes costs more than scoring it. A channel cut
only shrinks the axes :meth:`~onnxprune.structured.analysis.DependencyGraph.kept_positions` lists, so the
original shapes with those axes shrunk give every weighted node's MACs, and
:meth:`~onnxprune.structured.analysis.DependencyGraph.params_removed` gives the parameters, exactly as
:func:`onnxprune.core.stats.model_stats` counts them on the cut model.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping
from typing import cast

import numpy as np
from onnx import ModelProto

from onnxprune.core.ir import GraphIndex, Shape
from onnxprune.core.shapefold import infer_shapes
from onnxprune.core.stats import WEIGHTED_OPS, model_stats, node_macs
from onnxprune.structured.analysis import DependencyGraph


class CostModel:
    """Costs of cuts of one model (its shapes are inferred once, every weighted node's MACs counted once).

    A cut changes the MACs only of the weighted nodes that read or write a tensor whose shape it shrinks, so
    each :meth:`cost` recounts those and keeps the rest (integer sums: exactly the full recount).
    """

    def __init__(self, model: ModelProto, dg: DependencyGraph) -> None:
        self.model, self.dg = model, dg
        self.opset = GraphIndex(model).opset
        self.shapes: dict[str, Shape] = infer_shapes(model)
        self.base = model_stats(model, shapes=self.shapes)
        self._weighted = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS]
        self._macs = [node_macs(n, self.shapes, self.opset) for n in self._weighted]
        self._known_total = sum(m for m in self._macs if m is not None)
        self._unknown = {i for i, m in enumerate(self._macs) if m is None}
        self._readers: dict[str, list[int]] = {}  # tensor -> weighted nodes whose MACs read its shape
        for i, n in enumerate(self._weighted):
            for t in dict.fromkeys([*n.input, *n.output[:1]]):
                if t:
                    self._readers.setdefault(t, []).append(i)

    def cost(self, keep: Mapping[int, np.ndarray]) -> tuple[int, int] | None:
        """``(MACs at batch 1, params)`` of the model cut to ``keep`` (kept roots per group id); ``None``
        when a weighted node's MACs are unknown (build the model and count instead)."""
        shapes: dict[str, Shape] = {}
        for slot, pos in self.dg.kept_positions(keep).items():
            shape = shapes.get(slot.tensor, self.shapes.get(slot.tensor))
            if shape is not None and slot.axis < len(shape):
                shapes[slot.tensor] = tuple(len(pos) if i == slot.axis else d for i, d in enumerate(shape))
        affected = sorted({i for t in shapes for i in self._readers.get(t, ())})
        if self._unknown - set(affected):
            return None
        macs = self._known_total - sum(self._macs[i] or 0 for i in affected)
        if affected:
            view = cast("dict[str, Shape]", ChainMap(shapes, self.shapes))  # the cut's shapes over the original's
            for i in affected:
                m = node_macs(self._weighted[i], view, self.opset)
                if m is None:
                    return None
                macs += m
        return macs, self.base.params - self.dg.params_removed(keep)

