"""The zero-equivalence oracle that every structured test relies on.

Removing a channel is exact when the channel cannot reach the outputs any more. In the original model
that is what zeroing the consumer-side weight slices (the *sinks* of its group) does: so the pruned model
must compute the same outputs as the original with those slices set to zero. Any rule that forgets a
coupling, a parameter or an attribute breaks this equality.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto, numpy_helper

from onnxprune.core.io import save_model
from onnxprune.core.ir import GraphIndex, tensor_like
from onnxprune.core.quant import quantized_data, zero_point
from onnxprune.core.weights import copy_model_without_weights
from onnxprune.structured.analysis import DependencyGraph
from onnxprune.structured.plan import PrunePlan, check_plan
from onnxprune.structured.surgery import write_const


def zeroed_reference(model: ModelProto, dg: DependencyGraph, plan: PrunePlan) -> ModelProto:
    """The original model (not modified) with every sink slice of every dropped channel set to zero.

    Example:
        >>> ref = zeroed_reference(model, dg, plan)  # doctest: +SKIP
    """
    zero = _zero_cuts(dg, plan)
    # Copy the model without the tensors about to be zeroed and fill those once: copying and then
    # overwriting would hold both versions (protobuf frees replaced bytes only with the whole model).
    source = GraphIndex(model)
    m = copy_model_without_weights(model, [name for name in zero if name in source.initializers])
    index = GraphIndex(m)
    for name, cuts in zero.items():
        value = _zeroed(np.asarray(source.const_value(name)), cuts, _zero_of(source, name))
        write_const(index, name, value)
        del value
    return m


def write_zeroed_reference(model: ModelProto, dg: DependencyGraph, plan: PrunePlan,
                           path: str | os.PathLike[str]) -> Path:
    """Save :func:`zeroed_reference` to ``path`` (external data) without ever holding it in memory.

    Why: the reference is as big as the original and is only run once (by onnxruntime, which maps a file's
    weights itself). Streaming it one zeroed tensor at a time costs one tensor of memory instead of one
    model. Sinks held by Constant nodes (rare, small) are zeroed in memory via :func:`zeroed_reference`.

    Returns:
        The path written.
    """
    zero = _zero_cuts(dg, plan)
    source = GraphIndex(model)
    if any(name not in source.initializers for name in zero):
        return save_model(zeroed_reference(model, dg, plan), path, external_data=True)

    def replace(tensor: TensorProto) -> TensorProto:
        if tensor.name not in zero:
            return tensor
        return tensor_like(tensor, _zeroed(numpy_helper.to_array(tensor), zero[tensor.name],
                                           _zero_of(source, tensor.name)))

    return save_model(model, path, external_data=True, replace=replace)


def _zero_cuts(dg: DependencyGraph, plan: PrunePlan) -> dict[str, list[tuple[int, np.ndarray]]]:
    """``{tensor: [(axis, positions), ...]}``: the sink slices of every dropped channel.

    Raises:
        PlanError: the plan does not fit ``dg``.
    """
    check_plan(plan, dg)
    zero: dict[str, list[tuple[int, np.ndarray]]] = {}
    for gid in plan.keep:
        drop = plan.dropped(gid)
        if len(drop) == 0:
            continue
        for cut in dg.groups[gid].sinks:
            zero.setdefault(cut.tensor, []).append((cut.axis, cut.positions(drop)))
    return zero


def _zero_of(index: GraphIndex, name: str) -> np.ndarray | None:
    """The zero point of a quantized weight (its dequantized zero), None for a float constant."""
    dq = quantized_data(index).get(name)
    if dq is None:
        return None
    shape = index.const_shape(name) or ()
    return zero_point(index, dq, len(shape))


def _zeroed(value: np.ndarray, cuts: list[tuple[int, np.ndarray]], fill: np.ndarray | None = None) -> np.ndarray:
    """A copy of ``value`` with the given positions along the given axes set to zero (to ``fill``, the zero
    point, for a quantized weight, so that it dequantizes to exactly 0 and the reference stays quantized)."""
    out = np.array(value, copy=True)
    full = None if fill is None else np.broadcast_to(fill, out.shape)
    for axis, pos in cuts:
        index_tuple = [slice(None)] * out.ndim
        index_tuple[axis] = pos  # type: ignore[call-overload]
        out[tuple(index_tuple)] = 0 if full is None else full[tuple(index_tuple)]
    return out
