"""MACs and parameters of a cut model without building it.

Why this module exists: budgets and sensitivity need the cost of hundreds of candidate cuts. Building
each candidate (``apply_plan``) and re-inferring its shapes costs more than scoring it. A channel cut
only shrinks the axes :meth:`~onnxprune.structured.analysis.DependencyGraph.kept_positions` lists, so the
original shapes with those axes shrunk give every weighted node's MACs, and
:meth:`~onnxprune.structured.analysis.DependencyGraph.params_removed` gives the parameters, exactly as
:func:`onnxprune.core.stats.model_stats` counts them on the cut model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from onnx import ModelProto

from onnxprune.core.ir import GraphIndex, Shape
from onnxprune.core.shapefold import infer_shapes
from onnxprune.core.stats import WEIGHTED_OPS, model_stats, node_macs
from onnxprune.structured.analysis import DependencyGraph


class CostModel:
    """Costs of cuts of one model (its shapes are inferred once)."""

    def __init__(self, model: ModelProto, dg: DependencyGraph) -> None:
        self.model, self.dg = model, dg
        self.opset = GraphIndex(model).opset
        self.shapes: dict[str, Shape] = infer_shapes(model)
        self.base = model_stats(model, shapes=self.shapes)

    def cost(self, keep: Mapping[int, np.ndarray]) -> tuple[int, int] | None:
        """``(MACs at batch 1, params)`` of the model cut to ``keep`` (kept roots per group id); ``None``
        when a weighted node's MACs are unknown (build the model and count instead)."""
        shapes = dict(self.shapes)
        for slot, pos in self.dg.kept_positions(keep).items():
            shape = shapes.get(slot.tensor)
            if shape is not None and slot.axis < len(shape):
                shapes[slot.tensor] = tuple(len(pos) if i == slot.axis else d for i, d in enumerate(shape))
        macs = 0
        for node in self.model.graph.node:
            if node.op_type in WEIGHTED_OPS:
                m = node_macs(node, shapes, self.opset)
                if m is None:
                    return None
                macs += m
        return macs, self.base.params - self.dg.params_removed(keep)
