"""Reshape and Expand targets read by several nodes: one version of the target per distinct rewrite.

Why: the dynamo exporter de-duplicates identical shape computations, so the Reshapes that split Q, K and V
of every layer into heads can all read one ``Concat(batch, seq, heads, head_dim)``. A cut that keeps two
heads in one layer and three in another needs two head counts, and editing the shared ``Concat`` in place
would change every reader. This is the idea of :mod:`onnxprune.structured.sharing` (one stored version of a
shared constant per distinct cut), applied to shape targets: readers whose rewrite is the same share one
version; the version of the first reader in graph order is the original target, edited in place; every
other distinct version is a copy of the target's ``Concat`` (and of the nested nodes whose constant pieces
change), inserted next to the original, and its readers are pointed at it. A reader whose rewrite is
nothing (another layer left whole, a node that is no Reshape/Expand) reads the version holding the
original values. Runtime pieces are computed once, by the nodes the versions share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from onnx import NodeProto

from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.ir import node_label
from onnxprune.structured.rules.base import RewriteContext

log = logging.getLogger(__name__)

#: Key of the ids of the readers already given their version, in :attr:`RewriteContext.memo`.
_DONE = "target_versions"


@dataclass(frozen=True)
class PieceEdit:
    """A new value for one constant input of a node that builds a target (the target ``Concat``, a nested
    ``Concat`` or the ``Unsqueeze`` of a scalar).

    Attributes:
        node: the node whose input changes (a node of the original target tree).
        input_index: which input.
        value: the new constant, dtype and shape as stored.
    """

    node: NodeProto
    input_index: int
    value: np.ndarray

    def key(self) -> tuple:
        return id(self.node), self.input_index, self.value.dtype.str, self.value.shape, self.value.tobytes()


def is_shared(target: str, ctx: RewriteContext) -> bool:
    """Whether the computed target ``target`` is read by more than one node."""
    return not ctx.index.is_constant(target) and len(ctx.index.consumers.get(target, [])) > 1


def written(reader: NodeProto, ctx: RewriteContext) -> bool:
    """Whether ``reader`` already reads its version (written when the first reader of its target was)."""
    return id(reader) in ctx.memo.get(_DONE, set())  # type: ignore[operator]


def write_versions(target: str, edits_of: Callable[[NodeProto], Sequence[PieceEdit]], ctx: RewriteContext) -> None:
    """Rewrite a shared target once for all its readers: one version per distinct list of edits.

    Args:
        target: the shared target tensor (the output of a ``Concat``).
        edits_of: the edits a reader needs (empty: the original values); called once per reader.
        ctx: the surgery's context; every reader is marked :func:`written`, so that its own rewrite later
            does nothing (its target may be a copy by then, whose new constants the index does not know).
    """
    done: set[int] = ctx.memo.setdefault(_DONE, set())  # type: ignore[assignment]
    readers = list(ctx.index.consumers.get(target, []))
    done.update(id(r) for r in readers)
    groups: dict[tuple, tuple[list[PieceEdit], list[NodeProto]]] = {}
    for reader in readers:
        edits = list(edits_of(reader))
        key = tuple(sorted(e.key() for e in edits))
        groups.setdefault(key, (edits, []))[1].append(reader)
    versions = list(groups.values())
    if len(versions) > 1:
        log.debug("target %s: %d versions for %d readers", target, len(versions), len(readers))
    # Paths from the target's producer to every node any version edits, read before a copy adds readers to
    # them; each copy copies them all, so that the in-place edits of the first version reach no copy.
    chains = {id(e.node): _chain(e.node, target, ctx) for edits, _ in versions for e in edits}
    for edits, group in versions[1:]:  # copies first: they are made from the original values
        top = _copy_tree(target, list(chains.values()), ctx)
        for reader in group:
            _redirect(reader, target, top, ctx)
        for edit, node in zip(edits, [top[e.node.output[0]] for e in edits], strict=True):
            ctx.set_const_input(node, edit.input_index, edit.value)
    for edit in versions[0][0]:
        ctx.set_const_input(edit.node, edit.input_index, edit.value)


def _chain(node: NodeProto, target: str, ctx: RewriteContext) -> list[NodeProto]:
    """The nodes from ``node`` (a node holding a piece) up to the target's producer, following the one reader
    of each."""
    root = ctx.index.producer[target]
    chain = [node]
    while chain[-1] is not root:
        parents = ctx.index.consumers.get(chain[-1].output[0], [])
        if len(parents) != 1:  # the analysis reads nested pieces only when they have one reader
            raise OnnxPruneError(f"{node_label(chain[-1])}: a piece of the shared target '{target}' has "
                                 f"{len(parents)} readers; this is a bug, please report it with the model")
        chain.append(parents[0])
    return chain


def _copy_tree(target: str, chains: Sequence[list[NodeProto]], ctx: RewriteContext) -> dict[str, NodeProto]:
    """Copies of the target's producer and of every node on ``chains`` (edited node → producer), wired
    together; returns original output name → copy (the target's own producer under ``target``)."""
    index = ctx.index
    copies: dict[str, NodeProto] = {target: _copy_node(index.producer[target], ctx)}
    for chain in chains:
        for child, parent in zip(reversed(chain[:-1]), reversed(chain[1:]), strict=True):
            name = child.output[0]
            if name in copies:
                continue
            copies[name] = _copy_node(child, ctx)
            parent_copy = copies[parent.output[0]]
            for i, inp in enumerate(parent_copy.input):
                if inp == name:
                    parent_copy.input[i] = copies[name].output[0]
                    _move_reader(name, copies[name].output[0], parent_copy, ctx)
    return copies


def _copy_node(node: NodeProto, ctx: RewriteContext) -> NodeProto:
    """A copy of a one-output node with a fresh output name, inserted right after the original."""
    index = ctx.index
    copy = NodeProto()
    copy.CopyFrom(node)
    out = index.unique_name(f"onnxprune_{node.output[0]}")
    copy.output[0] = out
    copy.name = out
    position = next(i for i, n in enumerate(index.graph.node) if n is node)
    index.graph.node.insert(position + 1, copy)
    copy = index.graph.node[position + 1]  # protobuf stores its own copy
    index.producer[out] = copy
    for inp in dict.fromkeys(i for i in copy.input if i):
        index.consumers[inp].append(copy)
    return copy


def _redirect(reader: NodeProto, target: str, copies: dict[str, NodeProto], ctx: RewriteContext) -> None:
    """Point ``reader`` at the copy of ``target``: its target input for a Reshape/Expand, else every input."""
    new = copies[target].output[0]
    positions = [1] if reader.op_type in ("Reshape", "Expand") and reader.input[1] == target else \
        [i for i, name in enumerate(reader.input) if name == target]
    for i in positions:
        reader.input[i] = new
    _move_reader(target, new, reader, ctx)


def _move_reader(old: str, new: str, reader: NodeProto, ctx: RewriteContext) -> None:
    """Keep the index's consumer lists true after ``reader`` stopped reading ``old`` for ``new``."""
    consumers = ctx.index.consumers
    if old not in reader.input:
        consumers[old] = [n for n in consumers.get(old, []) if n is not reader]
    if not any(n is reader for n in consumers[new]):
        consumers[new].append(reader)
