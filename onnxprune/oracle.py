"""The zero-equivalence oracle that every structured test relies on.

Removing a channel is exact when the channel cannot reach the outputs any more. In the original model
that is what zeroing the consumer-side weight slices (the *sinks* of its group) does: so the pruned model
must compute the same outputs as the original with those slices set to zero. Any rule that forgets a
coupling, a parameter or an attribute breaks this equality.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto

from onnxprune.analysis import DependencyGraph
from onnxprune.ir import GraphIndex
from onnxprune.plan import PrunePlan, check_plan
from onnxprune.surgery import write_const
from onnxprune.weights import copy_model_without_weights


def zeroed_reference(model: ModelProto, dg: DependencyGraph, plan: PrunePlan) -> ModelProto:
    """The original model (not modified) with every sink slice of every dropped channel set to zero.

    Example:
        >>> ref = zeroed_reference(model, dg, plan)  # doctest: +SKIP
    """
    check_plan(plan, dg)
    zero: dict[str, list[tuple[int, np.ndarray]]] = {}
    for gid in plan.keep:
        drop = plan.dropped(gid)
        if len(drop) == 0:
            continue
        for cut in dg.groups[gid].sinks:
            zero.setdefault(cut.tensor, []).append((cut.axis, cut.positions(drop)))
    # Copy the model without the tensors about to be zeroed and fill those once: copying and then
    # overwriting would hold both versions (protobuf frees replaced bytes only with the whole model).
    source = GraphIndex(model)
    m = copy_model_without_weights(model, [name for name in zero if name in source.initializers])
    index = GraphIndex(m)
    for name, cuts in zero.items():
        value = np.array(source.const_value(name), copy=True)
        for axis, pos in cuts:
            index_tuple = [slice(None)] * value.ndim
            index_tuple[axis] = pos  # type: ignore[call-overload]
            value[tuple(index_tuple)] = 0
        write_const(index, name, value)
        del value
    return m
