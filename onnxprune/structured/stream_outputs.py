"""A residual stream that is a graph output, kept at the output's width by an appended projection.

Why: an encoder's last hidden state (BERT's and Whisper's ``last_hidden_state``) is the stream itself, after
the final LayerNorm. A graph output keeps its shape, so the width analysis blocks the whole stream, every
block's readers and writers with it ("'last_hidden_state' is a graph output").

The rewrite (exact): the output tensor ``y`` is renamed inside the graph and the output is computed as
``MatMul(y, I)`` with ``I`` the ``d × d`` identity (``x · I = x`` bit for bit: each entry is one product by 1
plus zeros). The appended MatMul is then a reader of the stream like any other, so the interior stream can
be cut while the output keeps its ``d`` channels:

* rotation + slicing (pre-norm): the final norm's scale and shift fold into it
  (:mod:`onnxprune.structured.lnfold`), its rows are multiplied by ``Qᵀ`` (:mod:`onnxprune.structured.rotate`)
  and the last rows sliced: the output becomes ``RMS(x_k) · Q_kᵀ diag(γ) + β``, a ``k → d`` projection that
  maps the sliced basis back to the full one;
* plain channel pruning (post-norm): its rows are cut with the stream, as a selection of the kept channels;
* either way it is re-fitted by least squares with the other readers (``--recover``).

It costs ``k·d`` MACs per position (``d·d`` before the cut), counted in the pruned model's MACs like any layer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from onnxprune.core.ir import FLOAT_TYPES, GraphIndex, replace_input
from onnxprune.core.stats import WEIGHTED_OPS
from onnxprune.structured.analysis import DependencyGraph, analyze
from onnxprune.structured.axes import ChannelAxis
from onnxprune.structured.stream import stream_group_ids, stream_rules

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamOutputs:
    """The model (the input itself when nothing was appended) and the projections appended.

    Attributes:
        model: the rewritten model.
        projections: ``(graph output, appended MatMul node, width)`` for each output kept at full width.
    """

    model: ModelProto
    projections: tuple[tuple[str, str, int], ...] = ()


def _stream_outputs(model: ModelProto, dg: DependencyGraph) -> list[tuple[str, int]]:
    """Float graph outputs whose last axis is a blocked residual stream: ``(name, width)``."""
    ids = set(stream_group_ids(model, dg))
    found = []
    for out in model.graph.output:
        shape = dg.shapes.get(out.name)
        if not shape or out.type.tensor_type.elem_type not in FLOAT_TYPES:
            continue
        gids = dg.group_of(ChannelAxis(out.name, len(shape) - 1))
        if gids and ids.issuperset(gids) and not all(dg.groups[g].prunable for g in gids):
            # a declared symbolic width (onnxruntime's optimizer writes 'Reshapeout_dim_2'): the group's
            width = shape[-1] if isinstance(shape[-1], int) else dg.groups[gids[0]].size
            found.append((out.name, int(width)))
    return found


def project_stream_outputs(model: ModelProto, *, dims: Mapping[str, int] | None = None) -> StreamOutputs:
    """Append an identity projection behind every graph output that is a blocked residual stream (exact),
    in place (the caller owns ``model``; ``result.model is model``).

    The rewrite is kept only when it unblocks the stream (the projection's input is then in a prunable
    group); otherwise it is undone, as an appended layer would only cost MACs.
    """
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    if all(producers.get(o.name, "") in WEIGHTED_OPS for o in model.graph.output):
        return StreamOutputs(model)  # heads (an LM head, a classifier) write every output: no analysis needed
    rules = stream_rules()
    dg = analyze(model, extra_rules=rules, dims=dict(dims) if dims else None)
    outputs = _stream_outputs(model, dg)
    if not outputs:
        return StreamOutputs(model)
    idx = GraphIndex(model)
    graph = model.graph
    dtypes = {o.name: o.type.tensor_type.elem_type for o in graph.output}
    appended: list[tuple[str, str, int]] = []
    undo: list[tuple[str, str, str]] = []  # (output, inner name, weight name)
    for name, width in outputs:
        producer = idx.producer.get(name)
        if producer is None:  # a graph input passed through: nothing inside to cut
            continue
        inner = idx.unique_name(f"{name}_stream")
        _rename(model, name, inner)
        eye = idx.unique_name(f"{name}_projection_weight")
        np_dtype = helper.tensor_dtype_to_np_dtype(dtypes[name])
        graph.initializer.append(numpy_helper.from_array(np.eye(width, dtype=np_dtype), eye))
        node_name = idx.unique_name(f"{name}_projection")
        pos = next(k for k, n in enumerate(graph.node) if n is producer)
        graph.node.insert(pos + 1, helper.make_node("MatMul", [inner, eye], [name], name=node_name))
        appended.append((name, node_name, width))
        undo.append((name, inner, eye))
    if not appended:
        return StreamOutputs(model)
    dg2 = analyze(model, extra_rules=rules, dims=dict(dims) if dims else None)
    for _, inner, _ in undo:
        gids = dg2.group_of(ChannelAxis(inner, len(dg2.shapes.get(inner, ())) - 1))
        if not gids or not all(dg2.groups[g].prunable for g in gids):
            why = next((dg2.groups[g].blockers[0] for g in gids if not dg2.groups[g].prunable), "no group")
            log.info("an output projection would not unblock the stream (%s); the model is left as it was", why)
            _undo(model, undo)
            return StreamOutputs(model)
    for o, n, w in appended:
        log.info("graph output %s is the residual stream: kept at width %d by an appended projection %s", o, w, n)
    return StreamOutputs(model, tuple(appended))


def _rename(model: ModelProto, old: str, new: str) -> None:
    """Every node output and input named ``old`` becomes ``new`` (graph outputs keep their names)."""
    for node in model.graph.node:
        for k, o in enumerate(node.output):
            if o == old:
                node.output[k] = new
    replace_input(model.graph, old, new)


def _undo(model: ModelProto, undo: list[tuple[str, str, str]]) -> None:
    graph = model.graph
    for name, inner, eye in undo:
        (node,) = [n for n in graph.node if n.op_type == "MatMul" and list(n.input) == [inner, eye]]
        graph.node.remove(node)
        _rename(model, inner, name)
        (pos,) = [k for k, t in enumerate(graph.initializer) if t.name == eye]
        del graph.initializer[pos]
