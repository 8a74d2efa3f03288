"""Depth: removing whole residual branches (``y = x + f(x)`` becomes ``y = x``).

Why it is exact, and what the oracle is: a branch ``f`` is removable when the only activation it reads is
the stream ``x`` (constants, graph inputs such as an attention mask, and ``Shape`` reads aside) and it ends
in a *last projection* (MatMul/Gemm/Conv with a constant weight) followed only by ops that map zero to zero
once their own constants are zeroed (bias Add, scale Mul, BatchNormalization, Reshape, Transpose, ...).
Zeroing that weight and those constants makes ``f(x) == 0`` exactly, so the model equals ``x + 0``:
removing the branch (every reader of ``y`` reads ``x``; nodes nobody reads any more are dropped) must give
the same outputs as :func:`depth_reference`.

Branches are found from the graph, not from names, and scored without data by the Frobenius norm of the
last projection (with its bias): a branch that writes little into the stream goes first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, helper, numpy_helper

from onnxprune.core.errors import ConfigError
from onnxprune.core.ir import GraphIndex, node_label
from onnxprune.core.stats import model_stats
from onnxprune.core.weights import copy_model_without_weights

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
        zero: where the oracle puts zeros: ``(output of the reading node, input position)`` of the last weight,
            its bias and the tail's constants. Slots, not constant names, because exporters share identical
            constants (e.g. every zero-initialised bias de-duplicated into one): the oracle gives this reader
            a zero of its own and leaves the other readers alone.
        score: Frobenius norm of the last projection's weight and bias (data-free).
        nodes: how many nodes compute ``f(x)``.
    """

    add: str
    stream: str
    branch_out: str
    output: str
    last: str
    zero: tuple[tuple[str, int], ...]
    score: float
    nodes: int


def _learned_activations(index: GraphIndex) -> set[str]:
    """Tensors whose value depends on a learned layer's output: a MatMul/Gemm/Conv applying a constant weight
    to an activation, or an embedding lookup (Gather from a constant table of rank >= 2).

    What is *not* in the set is side information computed from graph inputs, constants and shapes alone:
    attention masks, position ids, rotary tables.
    """
    learned: set[str] = set()
    for node in index.graph.node:  # topological order
        if node.op_type == "Shape":
            continue
        ins = [i for i in node.input if i]
        if node.op_type == "Gather":  # an embedding lookup: a constant table read at run-time indices
            table = index.const_shape(ins[0]) if len(ins) == 2 and not index.is_constant(ins[1]) else None
            weighted = table is not None and len(table) >= 2  # the shape only: the table is never decoded
        else:
            weighted = (node.op_type in _WEIGHTED and len(ins) > 1 and index.is_constant(ins[1])
                        and not index.is_constant(ins[0]))
        if weighted or any(i in learned for i in ins):
            learned.update(o for o in node.output if o)
    return learned


@dataclass(frozen=True)
class ResidualJoin:
    """An Add where a branch computed from the stream joins it again, removable or not (``analyze`` lists these).

    Attributes:
        add: the joining Add node.
        stream: ``x``, the tensor that goes on.
        start: where the branch starts: the node producing ``x`` (or ``input NAME``).
        kind: ``attention`` (has a Softmax), ``mlp`` (MatMul/Gemm), ``conv`` or ``other``.
        nodes: how many nodes compute the branch (counted up to :data:`MAX_BRANCH_NODES`).
        branch: the removable branch, or None.
        why: why it is not removable (empty when it is).
    """

    add: str
    stream: str
    start: str
    kind: str
    nodes: int
    branch: ResidualBranch | None
    why: str = ""


@dataclass(frozen=True)
class _Walk:
    nodes: list
    reads_stream: bool
    why: str  # why the nodes are no residual branch ("" when they are)


def _walk(index: GraphIndex, out: str, stream: str, learned: set[str]) -> _Walk:
    """The nodes computing ``out`` back to ``stream``, constants and side inputs, and why they are no branch.

    Side inputs are what attention reads besides the stream: graph inputs (an attention mask, position ids),
    values computed from them and from shapes alone (masks, rotary tables), and ``Shape`` reads. What makes a
    branch not a block is reading another *learned activation* that the stream itself was computed from (a
    skip from further back, DenseNet- or U-Net style): that is refused. Removing the branch is exact either
    way (``y = x``, dead nodes dropped); the rule keeps "block" meaning what users mean by it.
    """
    inputs = {i.name for i in index.graph.input} - set(index.initializers)
    if stream not in learned and stream not in inputs:
        return _Walk([], False, "a side value, not a residual stream")
    upstream = (index.ancestors([stream], through_shape=False) & learned) - {stream}
    seen: dict[int, object] = {}
    stack = [out]
    visited: set[str] = set()
    reads_stream = False
    why = ""
    while stack:
        t = stack.pop()
        if t in visited:
            continue
        visited.add(t)
        if t == stream:
            reads_stream = True
            continue
        if t in inputs or (index.is_constant(t) and t in index.initializers):
            continue
        if t in upstream:
            why = why or f"the branch also reads '{t}', an earlier activation of the stream's path"
            continue
        node = index.producer.get(t)
        if node is None:
            why = why or f"the branch reads '{t}', which no node computes"
            continue
        if id(node) not in seen:
            seen[id(node)] = node
            if len(seen) > MAX_BRANCH_NODES:
                return _Walk(list(seen.values()), reads_stream, f"the branch has more than {MAX_BRANCH_NODES} nodes")
            if node.op_type != "Shape":
                stack.extend(i for i in node.input if i)
    return _Walk(list(seen.values()), reads_stream, why)


def _branch_nodes(index: GraphIndex, out: str, stream: str, learned: set[str]) -> list | None:
    """Nodes computing ``out`` from ``stream``, constants and side inputs (None: not a residual branch)."""
    walk = _walk(index, out, stream, learned)
    return walk.nodes if walk.reads_stream and not walk.why else None


def _last_projection(index: GraphIndex, out: str) -> tuple[str, list[tuple[str, int]]] | str:
    """The last weighted node before ``out`` and the constant slots to zero so that ``out`` is zero, or why
    there is none."""
    zero: list[tuple[str, int]] = []
    t = out
    for _ in range(32):
        node = index.producer.get(t)
        if node is None:
            return f"it ends at graph input '{t}' before any weighted layer"
        data = node.input if node.op_type in ("Add", "Mul", "MatMul", "Gemm", "Conv") else node.input[:1]
        consts = [i for i in data if i and index.is_constant(i)]
        acts = [i for i in data if i and not index.is_constant(i)]
        if node.op_type in _WEIGHTED and len(node.input) > 1 and index.is_constant(node.input[1]) and len(acts) == 1 \
                and acts[0] == node.input[0]:
            zero.extend((node.output[0], k) for k in range(1, len(node.input)) if node.input[k])
            return node.name or node.output[0], zero
        if node.op_type not in _ZERO_TAIL:
            return f"its last op {node_label(node)} does not give zero for zero input"
        if len(acts) != 1:
            return f"{node_label(node)} after its last layer reads {len(acts)} activations"
        if node.op_type == "BatchNormalization":
            zero.extend((node.output[0], k) for k in (1, 2))
        elif node.op_type in ("Add", "Mul"):
            zero.extend((node.output[0], k) for k, i in enumerate(node.input) if i in consts)
        t = acts[0]
    return "no weighted layer within 32 ops of the join"


def _kind(nodes: list) -> str:
    ops = {n.op_type for n in nodes}
    if "Softmax" in ops:
        return "attention"
    if "Conv" in ops:
        return "conv"
    return "mlp" if ops & {"MatMul", "Gemm"} else "other"


def _examine(index: GraphIndex, node: NodeProto, out: str, stream: str, learned: set[str]
             ) -> tuple[_Walk, ResidualBranch | str]:
    """The branch ``out`` joining ``stream`` at Add ``node``: removable, or why not."""
    walk = _walk(index, out, stream, learned)
    if walk.why:
        return walk, walk.why
    if len(index.consumers.get(out, [])) != 1 or out in index.graph_outputs:
        return walk, f"the branch output '{out}' is also read elsewhere"
    last = _last_projection(index, out)
    if isinstance(last, str):
        return walk, last
    zero = tuple(dict.fromkeys(last[1]))
    weight = [index.const_value(index.producer[o].input[k]) for o, k in zero]
    if any(w is None for w in weight):
        return walk, f"a constant of the tail after {last[0]} cannot be read"
    score = float(np.sqrt(sum(float(np.sum(np.square(w, dtype=np.float64))) for w in weight if w is not None)))
    return walk, ResidualBranch(node.name or node.output[0], stream, out, node.output[0], last[0], zero, score,
                                len(walk.nodes))


def residual_joins(model: ModelProto) -> list[ResidualJoin]:
    """Every Add where a branch with a weighted layer, computed from one input, joins it again (graph order,
    removable or not; a GELU's ``x + 0.044715 x³`` is no block)."""
    index = GraphIndex(model)
    learned = _learned_activations(index)
    result: list[ResidualJoin] = []
    for node in index.graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or any(index.is_constant(i) for i in node.input):
            continue
        found: list[tuple[str, _Walk, ResidualBranch | str]] = []
        for side in (0, 1):
            out, stream = node.input[side], node.input[1 - side]
            walk, outcome = _examine(index, node, out, stream, learned)
            if walk.reads_stream and any(n.op_type in _WEIGHTED for n in walk.nodes):  # a block has a layer
                found.append((stream, walk, outcome))
        if not found:
            continue
        stream, walk, outcome = next((f for f in found if isinstance(f[2], ResidualBranch)), found[0])
        producer = index.producer.get(stream)
        start = (producer.name or producer.output[0]) if producer is not None else f"input {stream}"
        branch = outcome if isinstance(outcome, ResidualBranch) else None
        if branch is None:
            log.debug("%s: not removable: %s", node_label(node), outcome)
        result.append(ResidualJoin(node.name or node.output[0], stream, start, _kind(walk.nodes), len(walk.nodes),
                                   branch, "" if branch is not None else str(outcome)))
    return result


def residual_branches(model: ModelProto) -> list[ResidualBranch]:
    """Every removable residual branch, in graph order."""
    return [j.branch for j in residual_joins(model) if j.branch is not None]


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
    """The oracle: the original model (not modified) with each branch's last projection and tail zeroed.

    Each zeroed slot reads a fresh zero initializer of its own, so a constant the exporter shares with
    layers outside the branch keeps its value there.
    """
    m = copy_model_without_weights(model, [])
    index = GraphIndex(m)
    for b in branches:
        for output, k in b.zero:
            node = index.producer[output]
            value = np.asarray(index.const_value(node.input[k]))
            name = f"{node.input[k]}__zero_{output}_{k}"
            m.graph.initializer.append(numpy_helper.from_array(np.zeros_like(value), name))
            node.input[k] = name
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
