"""Vocabulary pruning of a language model: keep only some token ids in the embedding table and the LM head.

Why: in a small model the vocabulary is much of the weights (GPT-2: 50257 × 768 = 38.6 M of 124 M parameters),
and a deployment often sees only a few thousand ids (one language, one domain). The rewrite keeps the rows of
the token embedding table and the LM head's columns of the kept ids, in ascending id order, and reads the
table through an id map inserted before the embedding's ``Gather``: ``new = map[old]``, with every id outside
the kept set mapped to a fallback id (``unknown``, itself kept). For inputs whose ids are all kept the pruned
logits equal ``original_logits[..., kept]`` (exact: the same rows, the same arithmetic). The kept ids are
written to the model's ``metadata_props`` (``onnxprune.kept_token_ids``, JSON) so a pipeline can map the
logits' positions back to ids.

A head tied to the table (``MatMul(x, Transpose(E))``, GPT-2's dynamo export) stays tied: the table is cut once
and the head reads its transpose. A head stored as its own copy of ``Eᵀ`` (the legacy export) is cut with the
same ids, so it stays equal to the cut table's transpose.

Refused (:class:`~onnxprune.core.errors.UnsupportedModelError`) when the model has no token embedding
(``Gather`` of a constant ``[V, D]`` table by ids computed from a graph input) whose vocabulary ``V`` is the last
axis of a graph output written by a linear head, or when the table has other readers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import ModelProto, NodeProto, helper, numpy_helper

from onnxprune.core.errors import ConfigError, UnsupportedModelError
from onnxprune.core.ir import GraphIndex, attr, attr_ints, drop_unused_initializers, node_label

log = logging.getLogger(__name__)

#: The metadata key holding the kept ids (JSON list; position j of the logits is id ``kept[j]``).
KEPT_IDS_KEY = "onnxprune.kept_token_ids"
#: The metadata key holding the fallback id that ids outside the kept set are read as.
UNKNOWN_ID_KEY = "onnxprune.unknown_token_id"
#: Ops an id may pass through between the graph input and the embedding's Gather (they move, never compute).
_ID_MOVES = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Cast")


@dataclass(frozen=True)
class Vocab:
    """Where a language model's vocabulary lives.

    Attributes:
        size: the vocabulary ``V``.
        table: the embedding table ``[V, D]`` (an initializer).
        embedding: the ``Gather`` reading it by token ids.
        head: the node writing the logits (``MatMul`` or ``Gemm``).
        head_weight: its weight initializer (``""``: it reads the table transposed: tied).
        head_axis: the weight's vocabulary axis.
        bias: the logits' bias initializer (``""``: none), sliced along its last axis.
        logits: the graph output whose last axis is the vocabulary.
        ids: the graph input holding the token ids.
    """

    size: int
    table: str
    embedding: str
    head: str
    head_weight: str
    head_axis: int
    bias: str
    logits: str
    ids: str


def _from_input(idx: GraphIndex, tensor: str) -> str:
    """The graph input ``tensor`` is, moved (never computed) by the ops of ``_ID_MOVES``; ``""`` if none."""
    seen = 0
    while tensor not in idx.graph_inputs:
        node = idx.producer.get(tensor)
        if node is None or node.op_type not in _ID_MOVES or seen > 16:
            return ""
        tensor, seen = node.input[0], seen + 1
    return tensor


def _head_of(idx: GraphIndex, output: str) -> tuple[NodeProto, str] | None:
    """The linear node writing ``output`` (through a bias ``Add``) and the bias, or ``None``."""
    node = idx.producer.get(output)
    bias = ""
    if node is not None and node.op_type == "Add":
        consts = [i for i in node.input if idx.is_constant(i)]
        inner = [i for i in node.input if not idx.is_constant(i)]
        if len(consts) != 1 or len(inner) != 1:
            return None
        bias, node = consts[0], idx.producer.get(inner[0])
    if node is None or node.op_type not in ("MatMul", "Gemm"):
        return None
    return node, bias


def find_vocab(model: ModelProto) -> Vocab:
    """The token embedding and LM head of ``model`` (see the module docstring); raise where there is none."""
    idx = GraphIndex(model)
    tables: dict[str, NodeProto] = {}
    for node in model.graph.node:
        if node.op_type != "Gather" or int(attr(node, "axis", idx.opset, 0)) != 0:  # type: ignore[call-overload]
            continue
        shape = idx.const_shape(node.input[0])
        if node.input[0] in idx.initializers and shape is not None and len(shape) == 2 \
                and _from_input(idx, node.input[1]):
            tables[node.input[0]] = node
    why = "no Gather of a constant [V, D] table by token ids from a graph input" if not tables else ""
    for output in idx.graph_outputs:
        found = _head_of(idx, output)
        if found is None:
            continue
        head, bias = found
        w = head.input[1]
        transposed = idx.producer.get(w)
        if transposed is not None and transposed.op_type == "Transpose" and transposed.input[0] in tables:
            perm = attr_ints(transposed, "perm", idx.opset) or [1, 0]
            if perm != [1, 0] or head.op_type != "MatMul":
                continue
            table, weight, axis = transposed.input[0], "", 1
        else:
            shape = idx.const_shape(w)
            if w not in idx.initializers or shape is None or len(shape) != 2:
                continue
            axis = 0 if head.op_type == "Gemm" and attr(head, "transB", idx.opset, 0) else 1
            match = [t for t in tables if idx.const_shape(t)[0] == shape[axis]]  # type: ignore[index]
            if len(match) != 1:
                continue
            table, weight = match[0], w
            if head.op_type == "Gemm" and len(head.input) > 2 and head.input[2]:
                if bias:
                    continue
                bias = head.input[2]
        size = idx.const_shape(table)[0]  # type: ignore[index]
        others = [n for n in idx.consumers.get(table, []) if n is not tables[table]
                  and not (n.op_type == "Transpose" and not weight)]
        if others:
            why = f"the embedding table '{table}' is also read by {node_label(others[0])}"
            continue
        bias_shape = idx.const_shape(bias) if bias else None
        if bias and (bias not in idx.initializers or not bias_shape or bias_shape[-1] != size):
            continue
        gather = tables[table]
        return Vocab(size, table, gather.name, head.name, weight, axis, bias, output, _from_input(idx, gather.input[1]))
    why = why or "no graph output is written by a linear head over an embedding table's vocabulary"
    raise UnsupportedModelError(f"no vocabulary to prune: {why}; vocabulary pruning needs a token embedding and an "
                                f"LM head that writes a graph output")


@dataclass(frozen=True)
class VocabResult:
    """The pruned model and what was done (``report`` is JSON-able)."""

    model: ModelProto
    kept: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


def _slice(idx: GraphIndex, name: str, axis: int, kept: np.ndarray) -> int:
    """Keep ``kept`` along ``axis`` of initializer ``name`` in place; the parameters removed."""
    tensor = idx.initializers[name]
    value = numpy_helper.to_array(tensor)
    cut = np.ascontiguousarray(np.take(value, kept, axis=axis))
    tensor.CopyFrom(numpy_helper.from_array(cut, name))
    return int(value.size - cut.size)


def prune_vocab(model: ModelProto, keep: Sequence[int] | np.ndarray, *, unknown: int | None = None) -> VocabResult:
    """Keep only the token ids ``keep`` (see the module docstring). The input is not modified.

    Args:
        model: a language model with a token embedding and an LM head writing a graph output.
        keep: the ids to keep (any order, duplicates ignored).
        unknown: the id every other id is read as (default: the smallest kept id); must be kept.

    Raises:
        ConfigError: no id kept, an id outside ``[0, V)``, or ``unknown`` not kept.
        UnsupportedModelError: no vocabulary found (:func:`find_vocab`).
    """
    vocab = find_vocab(model)
    kept = np.unique(np.asarray(keep, dtype=np.int64).reshape(-1))
    if kept.size == 0:
        raise ConfigError("no token id to keep; give the ids to keep (a file, or the calibration data's ids)")
    if kept[0] < 0 or kept[-1] >= vocab.size:
        bad = int(kept[0] if kept[0] < 0 else kept[-1])
        raise ConfigError(f"token id {bad} is outside the vocabulary [0, {vocab.size}) of table '{vocab.table}'")
    fallback = int(kept[0]) if unknown is None else int(unknown)
    if fallback not in set(kept.tolist()):
        raise ConfigError(f"the unknown token id {fallback} is not among the kept ids; keep it or choose a kept one")
    out = ModelProto()
    out.CopyFrom(model)
    idx = GraphIndex(out)
    removed = _slice(idx, vocab.table, 0, kept)
    if vocab.head_weight and vocab.head_weight != vocab.table:
        removed += _slice(idx, vocab.head_weight, vocab.head_axis, kept)
    if vocab.bias:
        removed += _slice(idx, vocab.bias, len(idx.const_shape(vocab.bias) or (1,)) - 1, kept)
    remap = np.full(vocab.size, int(np.searchsorted(kept, fallback)), dtype=np.int64)
    remap[kept] = np.arange(kept.size, dtype=np.int64)
    gather = next(n for n in out.graph.node if n.name == vocab.embedding)
    table_map, mapped = idx.unique_name(f"{vocab.table}_id_map"), idx.unique_name(f"{gather.input[1]}_kept")
    out.graph.initializer.append(numpy_helper.from_array(remap, table_map))
    pos = next(k for k, n in enumerate(out.graph.node) if n is gather)
    out.graph.node.insert(pos, helper.make_node("Gather", [table_map, gather.input[1]], [mapped],
                                                name=idx.unique_name(f"{vocab.embedding}_id_map"), axis=0))
    gather.input[1] = mapped
    for o in out.graph.output:
        if o.name == vocab.logits and o.type.tensor_type.HasField("shape") and o.type.tensor_type.shape.dim:
            last = o.type.tensor_type.shape.dim[-1]
            last.Clear()
            last.dim_value = int(kept.size)
    sliced = {vocab.table, vocab.head_weight, vocab.bias} - {""}
    stale = sliced | {vocab.logits} | {n.output[0] for n in out.graph.node if n.name == vocab.head or (
        n.op_type == "Transpose" and n.input[0] == vocab.table)}
    for k in reversed([k for k, v in enumerate(out.graph.value_info) if v.name in stale]):
        del out.graph.value_info[k]  # shapes with the old vocabulary: inferred again where needed
    for v in out.graph.input:  # an initializer also listed as an input (older IR versions) states its shape
        if v.name in sliced:
            t = idx.initializers[v.name]
            v.CopyFrom(helper.make_tensor_value_info(v.name, t.data_type, list(t.dims)))
    meta = {p.key: p for p in out.metadata_props}
    for key, value in ((KEPT_IDS_KEY, json.dumps(kept.tolist())), (UNKNOWN_ID_KEY, str(fallback))):
        if key in meta:
            meta[key].value = value
        else:
            out.metadata_props.add(key=key, value=value)
    drop_unused_initializers(out.graph)
    report = {"vocab_before": vocab.size, "vocab_after": int(kept.size), "unknown_token_id": fallback,
              "table": vocab.table, "head": vocab.head, "tied": not vocab.head_weight,
              "params_removed": removed, "metadata_key": KEPT_IDS_KEY, "ids_input": vocab.ids}
    log.info("vocabulary %d -> %d ids (table %s, head %s)", vocab.size, kept.size, vocab.table, vocab.head)
    return VocabResult(out, kept, report)
