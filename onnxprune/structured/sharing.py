"""Constants read by several layers: which ones each reader gets to itself, and the versions a cut needs.

Why: exporters store identical constants once (an untrained network's zero biases, BatchNormalization's
scale 1 / bias 0 / mean 0 / variance 1, a LayerNorm's unit weight), so layers of the same width that have
nothing else in common read one tensor. Had the analysis treated that tensor as one slot, its positions
would tie the channels of every reader together, and unrelated layers would have to drop the same channel
indices (a torchvision SqueezeNet exported that way: 9 groups instead of 25).

So a shared constant that no reader reads as a *weight* (a source or sink: the input or output axis of a
Conv/Gemm/MatMul weight) gets one slot per reader (:attr:`ChannelAxis.reader`): each reader's channels are
tied to its copy only. After the cut, readers whose copies lost the same positions still share one tensor;
the others get their own (named ``onnxprune_<name>...``), which costs a few bytes. A shared weight stays one
slot: it is one layer applied twice (tied embeddings, a siamese branch) or its copies would cost real
parameters, so its readers stay tied.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from onnx import NodeProto

from onnxprune.core.ir import GraphIndex
from onnxprune.structured.axes import ChannelAxis
from onnxprune.structured.rules.base import Blocked, RuleContext
from onnxprune.structured.rules.registry import RuleSet

log = logging.getLogger(__name__)

#: Roles whose constant is a layer's weight: readers of a shared weight stay tied.
WEIGHT_ROLES = frozenset({"source", "sink"})


def reader_key(node: NodeProto) -> str:
    """How a reader of a shared constant is named in slots: its first output (unique in a valid graph, unlike
    node names), else its node name."""
    return node.output[0] if node.output and node.output[0] else node.name


def distinct_readers(index: GraphIndex, name: str, order: Mapping[int, int]) -> list[NodeProto]:
    """The nodes reading constant ``name`` (through Identity), each once, in graph order (``order``: node id
    → position)."""
    seen: dict[str, NodeProto] = {}
    for node in index.const_readers(name):
        seen.setdefault(reader_key(node), node)
    return sorted(seen.values(), key=lambda n: order.get(id(n), 0))


def split_constants(index: GraphIndex, rules: RuleSet, ctx: RuleContext) -> dict[str, tuple[str, ...]]:
    """Shared constants that get one slot per reader → their readers' keys, in graph order.

    A constant qualifies when at least two nodes read it, it has an axis, it is neither a graph input (its
    value may be overridden) nor a graph output, and no reader's rule couples it as a weight.
    """
    outputs = set(index.graph_outputs)
    inputs = set(index.graph_inputs)
    result: dict[str, tuple[str, ...]] = {}
    order = {id(n): i for i, n in enumerate(index.graph.node)}
    for name in list(index.initializers) + list(index.constant_nodes):
        if len(index.consumers.get(name, ())) < 2 and not any(
                n.op_type == "Identity" for n in index.consumers.get(name, ())):
            continue  # one direct reader and no Identity alias: not shared (the common case, kept cheap)
        if name in inputs or _is_output(index, name, outputs):
            continue
        readers = distinct_readers(index, name, order)
        shape = index.const_shape(name)
        if len(readers) < 2 or not shape:
            continue
        if any(reads_as_weight(node, name, len(shape), rules, ctx, index) for node in readers):
            log.debug("shared constant %s is read as a weight; its readers stay tied", name)
            continue
        result[name] = tuple(reader_key(n) for n in readers)
    return result


def _is_output(index: GraphIndex, name: str, outputs: set[str]) -> bool:
    stack = [name]
    while stack:
        t = stack.pop()
        if t in outputs:
            return True
        stack.extend(n.output[0] for n in index.consumers.get(t, []) if n.op_type == "Identity")
    return False


def reads_as_weight(node: NodeProto, name: str, rank: int, rules: RuleSet, ctx: RuleContext,
                    index: GraphIndex) -> bool:
    """``node`` couples constant ``name`` (of rank ``rank``) as a layer's weight (a source or sink axis)."""
    rule = rules.lookup(node.domain, node.op_type, index.opset)
    if rule is None:
        return False
    for axis in range(rank):
        try:
            couplings = rule.couplings(node, ChannelAxis(name, axis), ctx)
        except Blocked:
            continue
        if any(c.role in WEIGHT_ROLES and c.b.tensor == name for c in couplings):
            return True
    return False


@dataclass(frozen=True)
class ConstVersion:
    """One stored version of a cut constant.

    Attributes:
        readers: keys of the nodes that read this version; empty for a constant that is not split (every
            reader reads it).
        cuts: ``(axis, kept positions)`` per axis that loses positions, axes ascending.
    """

    readers: tuple[str, ...]
    cuts: tuple[tuple[int, np.ndarray], ...]

    def shape(self, shape: Iterable[int]) -> tuple[int, ...]:
        """The shape of this version of a constant of ``shape``."""
        out = list(shape)
        for axis, pos in self.cuts:
            out[axis] = len(pos)
        return tuple(out)

    def apply(self, value: np.ndarray) -> np.ndarray:
        """This version of ``value`` (one ``np.take`` per cut axis)."""
        for axis, pos in self.cuts:
            value = np.take(value, pos, axis=axis)
        return value


def const_versions(kept: Mapping[ChannelAxis, np.ndarray], constants: Iterable[str],
                   split: Mapping[str, tuple[str, ...]]) -> dict[str, list[ConstVersion]]:
    """The versions every cut constant needs, given the kept positions of every slot that loses some.

    A constant that is not split has one version. A split one has one version per distinct set of kept
    positions among its readers (readers whose slots lose nothing keep the whole tensor); the version of
    its first reader comes first and keeps the constant's name.
    """
    names = set(constants)
    per_tensor: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    for s, pos in kept.items():
        if s.tensor in names:
            per_tensor.setdefault(s.tensor, {}).setdefault(s.reader, {})[s.axis] = pos
    result: dict[str, list[ConstVersion]] = {}
    for name, by_reader in per_tensor.items():
        if name not in split:
            result[name] = [ConstVersion((), tuple(sorted(by_reader.get("", {}).items())))]
            continue
        groups: dict[tuple, list[str]] = {}
        cuts_of: dict[tuple, tuple[tuple[int, np.ndarray], ...]] = {}
        for reader in split[name]:
            cuts = tuple(sorted(by_reader.get(reader, {}).items()))
            key = tuple((axis, pos.tobytes()) for axis, pos in cuts)
            groups.setdefault(key, []).append(reader)
            cuts_of[key] = cuts
        result[name] = [ConstVersion(tuple(readers), cuts_of[key]) for key, readers in groups.items()]
    return result
