"""Putting a graph's nodes in topological order, as ONNX requires and onnxruntime does not.

Why: onnxruntime sorts a graph itself, so converters can emit nodes out of order and still produce a model that
runs. onnxruntime's own float16 converter (``onnxruntime.transformers.float16.convert_float_to_float16`` with
``keep_io_types=True``) appends the casts of the graph inputs after the nodes that read them. ``onnx.checker``
rejects such a model, and every pass of onnxprune walks nodes in order. Reordering changes nothing a model
computes, so a model whose only fault is its order is sorted on load instead of refused.
"""

from __future__ import annotations

import heapq

from onnx import GraphProto, NodeProto

from onnxprune.core.ir import subgraph_inputs, subgraphs


def _reads(node: NodeProto) -> set[str]:
    """Names ``node`` reads: its inputs and the outer-scope names its subgraphs (If, Loop, Scan) read."""
    return {n for n in node.input if n} | set(subgraph_inputs(node))


def in_order(graph: GraphProto) -> bool:
    """Whether no node of ``graph`` (or of its subgraphs) reads a name that a later node of its graph produces;
    read-only, so a caller can tell whether :func:`sort_nodes` would change a model it does not own."""
    later = {out for node in graph.node for out in node.output if out}
    for node in graph.node:
        if _reads(node) & later or not all(in_order(sub) for sub in subgraphs(node)):
            return False
        later.difference_update(node.output)
    return True


def sort_nodes(graph: GraphProto) -> bool:
    """Reorder ``graph.node`` (in place) so that every node comes after the nodes producing what it reads,
    keeping the original order wherever it already allows (a stable sort). Subgraphs are sorted too.

    Returns:
        True when any node moved. A graph with a cycle is left as it is (False): the checker then names it.
    """
    moved = False
    for node in graph.node:
        for sub in subgraphs(node):
            moved |= sort_nodes(sub)
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    waits_on = [{producer[n] for n in _reads(node) if n in producer and producer[n] != i}
                for i, node in enumerate(nodes)]
    readers: list[list[int]] = [[] for _ in nodes]
    for i, deps in enumerate(waits_on):
        for d in deps:
            readers[d].append(i)
    left = [len(d) for d in waits_on]
    ready = [i for i, n in enumerate(left) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for r in readers[i]:
            left[r] -= 1
            if left[r] == 0:
                heapq.heappush(ready, r)
    if len(order) != len(nodes) or order == list(range(len(nodes))):
        return moved
    copies = [NodeProto() for _ in nodes]
    for copy, i in zip(copies, order, strict=True):
        copy.CopyFrom(nodes[i])
    del graph.node[:]
    graph.node.extend(copies)
    return True
