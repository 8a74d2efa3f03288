"""Attention blocks as ``onnxprune analyze`` shows them: heads, head_dim, KV heads, and why any is blocked.

Why a module of its own: the head groups of :mod:`onnxprune.structured.attention` are channel groups whose
root channels are whole heads (or KV groups with grouped-query attention); a user asks a different question,
"which attention blocks can lose heads, how many heads have they, and if not, why", one line per block. This
reads the answer off the dependency graph: a head group gives its counts from its index maps, and a
``Softmax`` that no head group reaches is an attention block whose heads were not found, blocked with the
reason of the group holding its query projection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxprune.core.ir import GraphIndex, node_label
from onnxprune.structured.analysis import ChannelGroup, DependencyGraph
from onnxprune.structured.attention import attention_heads

_ZERO = np.array([0], dtype=np.int64)


def describe_heads(group: ChannelGroup, shapes: Mapping[str, Any], index: GraphIndex) -> dict[str, Any] | None:
    """``{"heads", "kv_heads", "head_dim", "unit", ...}`` of a head group, or None for other groups.

    ``head_dim`` is read off the head split: a Reshape ``[.., H*D] -> [.., H, D]`` where a root owns ``D``
    times more positions before than after (with grouped-query attention the query split gives the same
    ``D``; a packed ``[3E] -> [3, E]`` split is told apart by its last axis, which is not that ratio). The
    output projection's rows per root are ``heads / kv_heads`` such blocks. ``shapes`` are the dependency
    graph's tensor shapes, ``index`` the model's.
    """
    found = attention_heads(group)
    if found is None:
        return None
    split: list[int] = []  # D of each head split: a Reshape whose input root owns D times the positions
    by_tensor = {slot.tensor: m for slot, m in group.members.items()}
    for slot, m in group.members.items():
        node = index.producer.get(slot.tensor)
        shape = tuple(shapes.get(slot.tensor) or ())
        if node is None or node.op_type != "Reshape" or node.input[0] not in by_tensor or not shape:
            continue
        before, after = len(by_tensor[node.input[0]].forward(_ZERO)), len(m.forward(_ZERO))
        if after and before % after == 0 and before // after > 1 and shape[-1] == before // after:
            split.append(before // after)
    head_dim = min(split) if split else int(found["head_channels"])
    per_root = int(found["head_channels"]) // max(head_dim, 1)
    kv = int(found["heads"])
    sinks = [c.node for c in group.sinks if c.op_type in ("MatMul", "Gemm")]
    return {"group": group.id, "output_projection": sinks[0] if sinks else "", "heads": kv * per_root,
            "kv_heads": kv, "head_dim": head_dim, "unit": "heads" if per_root == 1 else "kv groups",
            "prunable": group.prunable, "why": group.blockers[0] if group.blockers else ""}


def _up(index: GraphIndex, tensor: str, *, stop: tuple[str, ...], weighted: bool) -> Any:
    """The first node above ``tensor`` (following its first activation input) of an op in ``stop``; with
    ``weighted``, one whose second input is a constant (a projection)."""
    for _ in range(32):
        node = index.producer.get(tensor)
        if node is None:
            return None
        if node.op_type in stop and (not weighted or (len(node.input) > 1 and index.is_constant(node.input[1]))):
            return node
        acts = [i for i in node.input if i and not index.is_constant(i)]
        if not acts:
            return None
        tensor = acts[0]
    return None


def attention_blocks(model: ModelProto, dg: DependencyGraph) -> list[dict[str, Any]]:
    """Every attention block of ``model``: its head group described, or a Softmax whose heads were not found."""
    index = GraphIndex(model)
    blocks = [d for d in (describe_heads(g, dg.shapes, index) for g in dg.groups) if d is not None]
    covered = {slot.tensor for g in dg.groups if attention_heads(g) for slot in g.members}
    source_group = {c.node: g for g in dg.groups for c in g.sources}
    for node in index.graph.node:
        if node.op_type != "Softmax" or node.output[0] in covered:
            continue
        scores = _up(index, node.input[0], stop=("MatMul",), weighted=False)
        query = _up(index, scores.input[0], stop=("MatMul", "Gemm"), weighted=True) if scores is not None else None
        if scores is None or query is None:
            continue  # a softmax over something else (a classifier, a gate): no attention found above it
        group = source_group.get(query.name or query.output[0])
        why = group.blockers[0] if group is not None and group.blockers else \
            "the split of its projections into heads was not recognised"
        blocks.append({"group": group.id if group is not None else None, "output_projection": "",
                       "softmax": node_label(node), "query_projection": query.name or query.output[0],
                       "heads": None, "kv_heads": None, "head_dim": None, "unit": "", "prunable": False,
                       "why": f"heads not found: {why}"})
    return blocks
