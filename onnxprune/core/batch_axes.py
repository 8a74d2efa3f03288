"""Which dynamic input axes are batch axes, and the dims a structural analysis uses for them.

Why this module exists: the channel groups of a model must not depend on how many samples the user's
data or ``--dim batch=N`` holds. At batch 1 a reshape that merges the batch with another axis (the dynamo
exporter's ``k.transpose(-2, -1)`` written as ``Reshape [B, H, T, D] -> [-1, T, D]``, transpose, and back)
leaves the head axis whole; at batch 2 the same axis reads as ``B*H`` positions and the analysis could not
follow the heads through it, so their groups were blocked. The pruned model does not depend on the batch
(such targets are ``-1`` or read at run time, and the oracle proves the cut at the data's own batch), so the
analysis is always done with every dynamic batch axis at 1. Runtime code (:mod:`onnxprune.runtime.dims`)
uses the same rule to choose a batch size when none is given.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

from onnx import ModelProto

SEQUENCE_NAME = re.compile(r"seq|len|token|time|step|frame", re.IGNORECASE)
BATCH_NAME = re.compile(r"batch|^(n|b|bs|num)$", re.IGNORECASE)
SPATIAL_NAME = re.compile(r"height|width|^(h|w)$", re.IGNORECASE)


def batch_like(axis: int, rank: int, name: str | None, before: Sequence[str | None] = ()) -> bool:
    """An axis named like a batch, or the leading axis of an input of rank 2 or more unless named like a
    sequence or a spatial axis (time-major ``[sequence, batch, ...]``).

    ``before`` holds the names of the axes in front of this one (``None`` for unnamed or fixed ones). A
    short name (``N``, ``B``, ``bs``, ``num``) past the leading axis is a batch only when no axis before it
    is one: ``[T, N, C]`` is time-major, but ``[B, N, 3]`` is a point cloud whose ``N`` counts points.
    """
    if name and BATCH_NAME.search(name):
        if axis == 0 or "batch" in name.lower():
            return True
        return not any(batch_like(i, rank, n, before[:i]) for i, n in enumerate(before[:axis]))
    other = bool(name and (SEQUENCE_NAME.search(name) or SPATIAL_NAME.search(name)))
    return axis == 0 and rank >= 2 and not other


def _names(shape: Sequence[object]) -> list[str | None]:
    """The dim names of a declared shape (``None`` for fixed or unnamed axes)."""
    return [getattr(d, "dim_param", None) or None for d in shape]


def _batch_axes(model: ModelProto) -> Iterator[tuple[str, int, str | None, int | None]]:
    """``(input, axis, dim name, declared size or None)`` of every batch-like axis of the model's inputs."""
    constants = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in constants or not vi.type.tensor_type.HasField("shape"):
            continue
        shape = vi.type.tensor_type.shape.dim
        for axis, d in enumerate(shape):
            name = d.dim_param or None
            if batch_like(axis, len(shape), name, _names(shape)[:axis]):
                fixed = d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                yield vi.name, axis, name, fixed


def analysis_dims(model: ModelProto, dims: Mapping[str, int] | None) -> dict[str, int]:
    """``dims`` with every dynamic batch-like axis of the model's inputs at 1 (by ``INPUT:AXIS`` and by name).

    Other dims (a sequence length, an image size) are kept: they are part of the model's structure as the
    user runs it. A declared (fixed) batch is left as declared.
    """
    result = dict(dims or {})
    for input_name, axis, name, fixed in _batch_axes(model):
        if fixed is not None:
            continue
        result[f"{input_name}:{axis}"] = 1
        if name:
            result[f"{input_name}:{name}"] = 1
            result[name] = 1
    return result


def counted_batch(model: ModelProto, dims: Mapping[str, int] | None) -> int:
    """The batch size that shapes (and so MACs) are counted at under ``dims``: the largest batch-like axis
    of the model's inputs, declared or given (by ``INPUT:AXIS`` or name), 1 when none is given.

    Why: summaries label MACs with the batch they were counted at. With ``--dim batch=2`` the counts are
    batch-2 counts, and a label fixed at "batch 1" would halve what the reader believes.
    """
    dims = dims or {}
    batch = 1
    for input_name, axis, name, fixed in _batch_axes(model):
        value = fixed if fixed is not None else dims.get(f"{input_name}:{axis}", dims.get(name, 1) if name else 1)
        batch = max(batch, int(value))
    return batch
