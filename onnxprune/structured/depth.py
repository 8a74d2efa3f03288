"""Depth: removing whole residual branches (``y = x + f(x)`` becomes ``y = x``).

Why it is exact, and what the oracle is: a branch ``f`` is removable when its only activation input is the
stream ``x`` (constants aside) and it ends in a *last projection* (MatMul/Gemm/Conv with a constant weight)
followed only by ops that map zero to zero once their own constants are zeroed (bias Add, scale Mul,
BatchNormalization, Reshape, Transpose, ...). Zeroing that weight and those constants makes ``f(x) == 0``
exactly, so the model equals ``x + 0``: removing the branch (every reader of ``y`` reads ``x``; nodes nobody
reads any more are dropped) must give the same outputs as :func:`depth_reference`.

Branches are found from the graph, not from names, and scored without data by the Frobenius norm of the
last projection (with its bias): a branch that writes little into the stream goes first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, helper

from onnxprune.core.errors import ConfigError
from onnxprune.core.ir import GraphIndex, node_label
from onnxprune.core.stats import model_stats
from onnxprune.core.weights import copy_model_without_weights
from onnxprune.structured.surgery import write_const

log = logging.getLogger(__name__)

#: Ops after the last projection that give zero for zero input once their constant operands are zeroed (a
#: reshaping op's shape input is not data and may be computed at run time).
_ZERO_TAIL = frozenset({"Add", "Mul", "BatchNormalization", "Reshape", "Transpose", "Identity", "Dropout", "Squeeze",
                        "Unsqueeze", "Flatten", "Relu", "Gelu"})
_WEIGHTED = frozenset({"MatMul", "Gemm", "Conv"})
#: Largest branch walked (nodes); bigger subgraphs are not taken as one residual branch.
MAX_BRANCH_NODES = 2000


@dataclass(frozen=True)
class ResidualBranch:
    """One removable ``y = x + f(x)``.

    Attributes:
        add: name of the Add node that joins the branch.
        stream: ``x``, the tensor that stays.
        branch_out: ``f(x)``, the tensor that goes.
        output: ``y``.
        last: the last projection's node name.
        zero: constants zeroed by the oracle (the last weight, its bias, the tail's constants).
        score: Frobenius norm of the last projection's weight and bias (data-free).
        nodes: how many nodes compute ``f(x)``.
    """

    add: str
    stream: str
    branch_out: str
    output: str
    last: str
    zero: tuple[str, ...]
    score: float
    nodes: int


def _branch_nodes(index: GraphIndex, out: str, stream: str) -> list | None:
    """Nodes computing ``out`` from ``stream`` and constants only (None: another activation is read)."""
    inputs = {i.name for i in index.graph.input} - set(index.initializers)
    seen: dict[int, object] = {}
    stack = [out]
    visited: set[str] = set()
    reads_stream = False
    while stack:
        t = stack.pop()
        if t in visited:
            continue
        visited.add(t)
        if t == stream:
            reads_stream = True
            continue
        if index.is_constant(t) and t not in inputs and t in index.initializers:
            continue
        node = index.producer.get(t)
        if node is None:
            return None  # a graph input other than the stream
        if id(node) not in seen:
            seen[id(node)] = node
            if len(seen) > MAX_BRANCH_NODES:
                return None
            stack.extend(i for i in node.input if i)
    return list(seen.values()) if reads_stream else None


def _last_projection(index: GraphIndex, out: str) -> tuple[str, list[str]] | None:
    """The last weighted node before ``out`` and the constants to zero so that ``out`` is zero."""
    zero: list[str] = []
    t = out
    for _ in range(32):
        node = index.producer.get(t)
        if node is None:
            return None
        data = node.input if node.op_type in ("Add", "Mul", "MatMul", "Gemm", "Conv") else node.input[:1]
        consts = [i for i in data if i and index.is_constant(i)]
        acts = [i for i in data if i and not index.is_constant(i)]
        if node.op_type in _WEIGHTED and len(node.input) > 1 and index.is_constant(node.input[1]) and len(acts) == 1 \
                and acts[0] == node.input[0]:
            zero.extend(index.resolve_identity(i) for i in node.input[1:] if i)
            return node.name or node.output[0], zero
        if node.op_type not in _ZERO_TAIL or len(acts) != 1:
            return None
        if node.op_type == "BatchNormalization":
            zero.extend(index.resolve_identity(i) for i in node.input[1:3])
        elif node.op_type in ("Add", "Mul"):
            zero.extend(index.resolve_identity(i) for i in consts)
        t = acts[0]
    return None


def residual_branches(model: ModelProto) -> list[ResidualBranch]:
    """Every removable residual branch, in graph order."""
    index = GraphIndex(model)
    result: list[ResidualBranch] = []
    for node in index.graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or any(index.is_constant(i) for i in node.input):
            continue
        for side in (0, 1):
            out, stream = node.input[side], node.input[1 - side]
            if len(index.consumers.get(out, [])) != 1 or out in index.graph_outputs:
                continue
            nodes = _branch_nodes(index, out, stream)
            last = _last_projection(index, out) if nodes else None
            if nodes is None or last is None:
                continue
            weight = [index.const_value(z) for z in last[1]]
            zero = tuple(dict.fromkeys(last[1]))
            if any(w is None for w in weight) or any(len(index.const_readers(z)) != 1 for z in zero):
                log.debug("%s: the branch's last constants are shared; not removable", node_label(node))
                continue
            score = float(np.sqrt(sum(float(np.sum(np.square(w, dtype=np.float64))) for w in weight
                                      if w is not None)))
            result.append(ResidualBranch(node.name or node.output[0], stream, out, node.output[0], last[0], zero,
                                         score, len(nodes)))
            break
    return result


def choose_branches(branches: Sequence[ResidualBranch], count: int, *,
                    scores: Sequence[float] | None = None) -> list[ResidualBranch]:
    """The ``count`` branches with the smallest score (``scores``, e.g. block influence measured on data, or
    each branch's own data-free score; ties: graph order)."""
    if not 0 <= count <= len(branches):
        raise ConfigError(f"cannot remove {count} residual blocks: the model has {len(branches)} removable ones "
                          f"(see `onnxprune analyze`); pick 0..{len(branches)}")
    key = list(scores) if scores is not None else [b.score for b in branches]
    order = sorted(range(len(branches)), key=lambda k: (key[k], k))[:count]
    return [branches[k] for k in sorted(order)]


def choose_for_macs(model: ModelProto, branches: Sequence[ResidualBranch], target: float, *,
                    scores: Sequence[float] | None = None, dims: dict[str, int] | None = None
                    ) -> tuple[list[ResidualBranch], float]:
    """The fewest lowest-scored branches whose removal keeps at most ``target`` of the model's MACs, and the
    share kept.

    Blocks go in score order (as :func:`choose_branches` takes them) until the budget is met; MACs are
    counted on the model with those blocks really removed, so shared or dead computations are not guessed.

    Raises:
        ConfigError: even removing every removable block keeps more than ``target`` (the message says how
            much that keeps).
    """
    before = model_stats(model, dims=dims).macs
    share = 1.0
    for count in range(len(branches) + 1):
        chosen = choose_branches(branches, count, scores=scores)
        if count:
            share = model_stats(remove_branches(model, chosen), dims=dims).macs / max(before, 1)
        if share <= target + 1e-12:
            return chosen, share
    raise ConfigError(f"removing all {len(branches)} removable residual blocks keeps {share:.1%} of the MACs, "
                      f"above the target {target:.1%}; raise the target, or cut channels too (a ratio) "
                      f"and budget the blocks by count")


def depth_reference(model: ModelProto, branches: Iterable[ResidualBranch]) -> ModelProto:
    """The oracle: the original model (not modified) with each branch's last projection and tail zeroed."""
    names = [z for b in branches for z in b.zero]
    source = GraphIndex(model)
    m = copy_model_without_weights(model, [n for n in names if n in source.initializers])
    index = GraphIndex(m)
    for name in names:
        write_const(index, name, np.zeros_like(np.asarray(source.const_value(name))))
    return m


def remove_branches(model: ModelProto, branches: Iterable[ResidualBranch]) -> ModelProto:
    """A copy of ``model`` where every branch's ``y = x + f(x)`` is ``y = x``; dead nodes and constants go."""
    m = ModelProto()
    m.CopyFrom(model)
    graph = m.graph
    outputs = {o.name for o in graph.output}
    renamed: dict[str, str] = {}  # a removed Add's output -> the stream now read instead
    for b in branches:
        stream = b.stream
        while stream in renamed:  # consecutive blocks: this stream was itself a removed Add's output
            stream = renamed[stream]
        add = next(n for n in graph.node if (n.name or n.output[0]) == b.add)
        position = list(graph.node).index(add)
        graph.node.remove(add)
        if b.output in outputs:  # keep the output's name
            graph.node.insert(position, helper.make_node("Identity", [stream], [b.output], name=b.add))
            continue
        renamed[b.output] = stream
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == b.output:
                    node.input[i] = stream
    _drop_dead(m)
    return m


def _drop_dead(m: ModelProto) -> None:
    graph = m.graph
    while True:
        used = {o.name for o in graph.output} | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
    names = {t for n in graph.node for t in n.output} | {i.name for i in graph.input}
    kept_vi = [vi for vi in graph.value_info if vi.name in names]
    del graph.value_info[:]
    graph.value_info.extend(kept_vi)
