"""Exact rewrite: a tied LM head ``MatMul(x, Transpose(E))`` gets its own weight ``Eᵀ`` (untied).

Why: a language model that ties its LM head to the embedding table ``E`` (GPT-2 as the dynamo exporter
writes it) reads the table twice: ``Gather(E, ids)`` writes the residual stream, and ``MatMul(x,
Transpose(E))`` reads it. The analysis cuts constant weights only, so the transposed table is an activation
and the LM head "contracts two activations over the cut axis": the whole stream stays blocked. Constant
folding leaves it so on purpose (it would store the table twice). Width mode needs the stream, so it stores
``Eᵀ`` as the head's own weight: the model then holds the table twice (``vocab × width`` more parameters,
said in the report), and both copies are cut along the stream consistently. The outputs are unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from onnx import ModelProto, TensorProto, numpy_helper

from onnxprune.core.ir import GraphIndex, attr_ints, drop_unused_initializers

log = logging.getLogger(__name__)


def untie_transposed_weights(model: ModelProto, *, source: Mapping[str, TensorProto] | None = None
                             ) -> tuple[str, ...]:
    """Give every ``MatMul`` whose weight is ``Transpose`` of a 2-D initializer its own transposed copy, in
    place (the caller owns ``model``); returns the names of the initializers untied. A ``Transpose`` left
    without readers is removed. ``source``: where the data of initializers copied without it is read (a
    copy made without its weights' data, :func:`~onnxprune.structured.rotate.prepare_rotation`)."""
    idx = GraphIndex(model)
    copies: dict[str, str] = {}  # Transpose output -> its stored copy
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        t = idx.producer.get(node.input[1])
        if t is None or t.op_type != "Transpose" or t.input[0] not in idx.initializers:
            continue
        if t.output[0] not in copies:
            held = (source or {}).get(t.input[0])
            table = numpy_helper.to_array(held) if held is not None else idx.const_value(t.input[0])
            if table is None or table.ndim != 2 or attr_ints(t, "perm", idx.opset, [1, 0]) != [1, 0]:
                continue
            name = idx.unique_name(f"{t.input[0]}_untied")
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table.T), name))
            copies[t.output[0]] = name
        node.input[1] = copies[t.output[0]]
    if not copies:
        return ()
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for n in [n for n in model.graph.node if n.op_type == "Transpose" and n.output[0] in copies and
              n.output[0] not in used]:
        model.graph.node.remove(n)
    drop_unused_initializers(model.graph)
    untied = tuple(copies.values())
    log.info("untied %d transposed weight(s) read by a MatMul (stored transposed, once more): %s", len(untied),
             ", ".join(untied))
    return untied
