"""Exact rewrite: a tied LM head ``MatMul(x, Transpose(E))`` gets its own weight ``Eᵀ`` (untied).

Why: a language model that ties its LM head to the embedding table ``E`` (GPT-2 as the dynamo exporter
writes it) reads the table twice: ``Gather(E, ids)`` writes the residual stream, and ``MatMul(x,
Transpose(E))`` reads it. The analysis cuts constant weights only, so the transposed table is an activation
and the LM head "contracts two activations over the cut axis": the whole stream stays blocked. Constant
folding leaves it so on purpose (it would store the table twice). Width mode needs the stream, so it stores
``Eᵀ`` as the head's own weight: the model then holds the table twice (``vocab × width`` more parameters,
said in the report), and both copies are cut along the stream consistently. The outputs are unchanged.
Once the stream is cut, :mod:`onnxprune.structured.retie` ties the head back (unless asked not to).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from onnx import ModelProto, TensorProto, numpy_helper

from onnxprune.core.ir import GraphIndex, attr, attr_ints, drop_unused_initializers

log = logging.getLogger(__name__)


def untie_transposed_weights(model: ModelProto, *, source: Mapping[str, TensorProto] | None = None
                             ) -> tuple[tuple[str, str, str], ...]:
    """Give every ``MatMul`` whose weight is ``Transpose`` of a 2-D initializer its own transposed copy, in
    place (the caller owns ``model``); returns ``(copy, table, head)`` for each MatMul (``head``, its node
    name; an unnamed one is named) so that :func:`onnxprune.structured.retie.retie_heads` can tie the head
    back once the stream is cut (a re-fit may rename its weight, not the node). A ``Transpose`` left without
    readers is removed. ``source``: where the data of initializers copied without it is read (a copy made
    without its weights' data, :func:`~onnxprune.structured.rotate.prepare_rotation`)."""
    idx = GraphIndex(model)
    copies: dict[str, str] = {}  # Transpose output -> its stored copy
    tables: dict[str, str] = {}  # stored copy -> the table it transposes
    heads: list[tuple[str, str, str]] = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        t = idx.producer.get(node.input[1])
        if t is None or t.op_type != "Transpose" or t.input[0] not in idx.initializers:
            continue
        if t.output[0] not in copies:
            table = _value(idx, source, t.input[0])
            if table is None or table.ndim != 2 or attr_ints(t, "perm", idx.opset, [1, 0]) != [1, 0]:
                continue
            name = idx.unique_name(f"{t.input[0]}_untied")
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table.T), name))
            copies[t.output[0]] = name
            tables[name] = t.input[0]
        node.input[1] = copies[t.output[0]]
        if not node.name:
            node.name = idx.unique_name("lm_head")
        heads.append((node.input[1], tables[node.input[1]], node.name))
    if not copies:
        return ()
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for n in [n for n in model.graph.node if n.op_type == "Transpose" and n.output[0] in copies and
              n.output[0] not in used]:
        model.graph.node.remove(n)
    drop_unused_initializers(model.graph)
    log.info("untied %d transposed weight(s) read by a MatMul (stored transposed, once more): %s", len(tables),
             ", ".join(tables))
    return tuple(heads)


def find_stored_ties(model: ModelProto, *, source: Mapping[str, TensorProto] | None = None
                     ) -> tuple[tuple[str, str, str], ...]:
    """``(weight, table, head)`` for every ``MatMul`` whose constant weight is, value for value, the transpose
    of a table a ``Gather`` reads: a tied LM head the exporter (torch's legacy one) or a constant fold stored
    a second time. Nothing is changed; :func:`onnxprune.structured.retie.retie_heads` ties them once the
    stream is cut, so the pruned model stores the table once (smaller than the input by more than the cut).
    An unnamed head is named. ``source``: as for :func:`untie_transposed_weights`."""
    idx = GraphIndex(model)
    tables: dict[tuple[int, ...], list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[0] in idx.initializers and attr(node, "axis", idx.opset, 0) == 0:
            dims = tuple(idx.initializers[node.input[0]].dims)
            if len(dims) == 2 and node.input[0] not in tables.get(dims, []):
                tables.setdefault(dims, []).append(node.input[0])
    found: list[tuple[str, str, str]] = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in idx.initializers:
            continue
        dims = tuple(idx.initializers[node.input[1]].dims)
        for table in tables.get(dims[::-1], []) if len(dims) == 2 else []:
            w, t = _value(idx, source, node.input[1]), _value(idx, source, table)
            if w is not None and t is not None and np.array_equal(w, t.T):
                if not node.name:
                    node.name = idx.unique_name("lm_head")
                found.append((node.input[1], table, node.name))
                break
    if found:
        log.info("%d LM head weight(s) equal a stored embedding table transposed (tied, stored twice): %s",
                 len(found), ", ".join(w for w, _, _ in found))
    return tuple(found)


def _value(idx: GraphIndex, source: Mapping[str, TensorProto] | None, name: str) -> np.ndarray | None:
    """A constant's value, from ``source`` where the model holds it without its data."""
    held = (source or {}).get(name)
    return numpy_helper.to_array(held) if held is not None else idx.const_value(name)
