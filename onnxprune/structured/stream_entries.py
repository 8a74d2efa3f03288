"""A pre-norm stream that starts at a nonlinearity, made rotatable by an appended identity projection.

Why: rotation + slicing (:mod:`onnxprune.structured.rotate`) needs every writer of the stream to be linear, so
that multiplying its output by ``Q`` rotates the stream. Whisper's encoder writes its stream as
``GELU(conv2(x))``, transposed, plus positions: the GELU is the writer, and a rotation cannot cross it
("the stream passes through Gelu"), so such a model fell back to plain channel pruning.

The rewrite (exact): right after the nonlinearity, where the stream's channels are the last axis, the tensor
``t`` is read through ``MatMul(t, I)`` with ``I`` the ``d × d`` identity. The stream then starts at that MatMul,
a linear writer whose columns are rotated by ``Q`` and sliced like an embedding's; the nonlinearity and the
layer before it keep their full width (they form a group of their own). It costs ``d·k`` MACs per position
after slicing, counted in the result like any layer. Only kept when the rotation then becomes possible.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from onnxprune.core.errors import UnsupportedModelError
from onnxprune.core.ir import FLOAT_TYPES, GraphIndex, replace_input
from onnxprune.structured.analysis import analyze
from onnxprune.structured.stream import stream_group_ids, stream_rules

log = logging.getLogger(__name__)

#: Ops that move the stream's channel axis without mixing it: followed from the nonlinearity to where the
#: channels are the last axis.
MOVES = ("Transpose", "Identity", "Dropout")

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """An identity projection appended where a stream starts: the tensor it reads and the MatMul's name."""

    tensor: str
    node: str
    width: int


def _candidates(model: ModelProto, linear: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """``(tensor, width, element type)`` right after each nonlinearity that writes the stream, channels last
    (the element type is the stream norm's scale's)."""
    dg = analyze(model, extra_rules=stream_rules())
    ids = stream_group_ids(model, dg)
    if len(ids) != 1 or not dg.groups[ids[0]].prunable:  # several streams (wav2vec2's features + encoder):
        return []  # a rotation would cut only one of them, plain pruning cuts them all
    group = dg.groups[ids[0]]
    last = {s.tensor: s.axis for s in group.members if s.axis == len(dg.shapes.get(s.tensor, ())) - 1}
    idx = GraphIndex(model)
    by_name = {n.name: n for n in model.graph.node}
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization" and n.input[0] in last]
    scale = idx.initializers.get(norms[0].input[1]) if norms and len(norms[0].input) > 1 else None
    if scale is None or scale.data_type not in FLOAT_TYPES:
        return []
    before_norms = idx.ancestors(n.input[0] for n in norms)
    found: list[tuple[str, int, int]] = []
    for name in group.nodes:
        node = by_name.get(name)
        if node is None or node.op_type in linear or node.output[0] not in before_norms:
            continue
        t = node.output[0]
        while t not in last:  # follow single readers that only move the axis
            users = idx.consumers.get(t, [])
            if len(users) != 1 or users[0].op_type not in MOVES or t in idx.graph_outputs:
                break
            t = users[0].output[0]
        shape = dg.shapes.get(t)
        if t in last and shape and isinstance(shape[-1], int):
            found.append((t, int(shape[-1]), scale.data_type))
    # only the last nonlinearity on each path (GELU written out is Mul, Sigmoid, Mul): one projection per entry
    upstream = set().union(*(idx.ancestors(i for i in idx.producer[t].input if i) for t, _, _ in found))
    return [f for f in found if f[0] not in upstream]


def with_stream_entries(model: ModelProto, prepare: Callable[[ModelProto], T], linear: tuple[str, ...]
                        ) -> tuple[T, tuple[Entry, ...]]:
    """``prepare(model)``; where it refuses because a nonlinearity writes the stream, ``prepare`` of the model
    with identity projections appended after each such writer (in place: the caller owns ``model``).

    Raises:
        UnsupportedModelError: ``prepare``'s own refusal when the projections do not make it possible (the
            model is then left as it was).
    """
    try:
        return prepare(model), ()
    except UnsupportedModelError as first:
        if "not linear" not in str(first):
            raise
        found = _candidates(model, linear)
        if not found:
            raise
        entries = _append(model, found)
        try:
            result = prepare(model)
        except UnsupportedModelError:
            _remove(model, entries)
            raise first from None
    for e in entries:
        log.info("the stream starts at a nonlinearity: %s read through an appended projection %s (width %d)",
                 e.tensor, e.node, e.width)
    return result, entries


def _append(model: ModelProto, found: list[tuple[str, int, int]]) -> tuple[Entry, ...]:
    idx = GraphIndex(model)
    graph = model.graph
    entries = []
    for tensor, width, dtype in found:
        out = idx.unique_name(f"{tensor}_entry")
        replace_input(graph, tensor, out)
        eye = idx.unique_name(f"{tensor}_entry_weight")
        graph.initializer.append(numpy_helper.from_array(
            np.eye(width, dtype=helper.tensor_dtype_to_np_dtype(dtype)), eye))
        name = idx.unique_name(f"{tensor}_entry_projection")
        producer = idx.producer[tensor]
        pos = next(k for k, n in enumerate(graph.node) if n is producer)
        graph.node.insert(pos + 1, helper.make_node("MatMul", [tensor, eye], [out], name=name))
        entries.append(Entry(tensor, name, width))
    return tuple(entries)


def _remove(model: ModelProto, entries: tuple[Entry, ...]) -> None:
    graph = model.graph
    for e in entries:
        (node,) = [n for n in graph.node if n.name == e.node]
        out, eye = node.output[0], node.input[1]
        graph.node.remove(node)
        for n in graph.node:
            for k, i in enumerate(n.input):
                if i == out:
                    n.input[k] = e.tensor
        (pos,) = [k for k, t in enumerate(graph.initializer) if t.name == eye]
        del graph.initializer[pos]
