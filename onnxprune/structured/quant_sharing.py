"""Quantized constants read by several layers (a QDQ model's shared biases): one copy per reader.

Why: exporters store identical constants once (the zero biases of an untrained or freshly initialised
network), and :mod:`onnxprune.structured.sharing` gives each reader of such a float constant its own slots.
onnxruntime's ``quantize_static`` (QDQ) then quantizes the tensor where its first reader needs it (a Conv's
bias becomes int32 behind a ``DequantizeLinear``), and the ``Identity`` aliases the exporter wrote for the
other readers now read that ``DequantizeLinear``'s *output*: in a Hugging Face ViT the patch embedding's
bias is read (through ``Identity`` and a fake-quant ``QuantizeLinear``/``DequantizeLinear`` pair) as the
bias of every q/k/v/o projection and FFN down-projection. The analysis sees a quantized weight through its
``DequantizeLinear`` (it cuts the integer storage), so without this module that one storage slot tied every
reader's channels together: the attention heads were merged into the residual stream and blocked with it,
and the FFNs of different layers were merged (21.2% coverage instead of the float model's 42.5%).

So a quantized constant whose ``DequantizeLinear`` output is read by several layers, none as a *weight*
(tied weights stay tied, as for float constants), is split like a float one: every reader gets its own
slots of the integer storage and, when the scale is per channel, of the scale and zero point (the
``DequantizeLinear`` is analysed once per reader, with that reader's copies). At surgery a reader whose copy
lost other channels than the first reader's gets its own storage, scale and zero point and its own
``DequantizeLinear`` (:func:`dequantizer_for`); the integer types and the scales' values are kept, so the
pruned model stays quantized and computes exactly what the kept channels computed before.
"""

from __future__ import annotations

from collections.abc import Mapping

from onnx import NodeProto, helper

from onnxprune.core.ir import GraphIndex
from onnxprune.core.quant import quantized_outputs
from onnxprune.structured.rules.base import RuleContext
from onnxprune.structured.rules.registry import RuleSet
from onnxprune.structured.sharing import reader_key, reads_as_weight


def _aliases(index: GraphIndex, name: str) -> set[str]:
    """``name`` and its Identity copies."""
    found = {name}
    stack = [name]
    while stack:
        for node in index.consumers.get(stack.pop(), []):
            if node.op_type == "Identity" and node.output[0] not in found:
                found.add(node.output[0])
                stack.append(node.output[0])
    return found


def split_quantized(index: GraphIndex, rules: RuleSet, ctx: RuleContext, order: Mapping[int, int]
                    ) -> tuple[dict[str, tuple[str, ...]], dict[str, NodeProto]]:
    """Shared quantized constants that get one slot per reader.

    Returns ``(split, dequantizer)``: ``split`` maps the integer storage (and, for a per-channel scale, the
    scale and zero point) to the keys of the layers reading the ``DequantizeLinear``'s output, in graph
    order (``order``: node id → position); ``dequantizer`` maps each of those tensors to its
    ``DequantizeLinear``. A constant qualifies when its storage, scale and zero point are read by that one
    ``DequantizeLinear`` only (a tensor shared at the integer level is left to
    :mod:`onnxprune.structured.sharing`), its output is neither a graph output nor read as a weight, and at
    least two distinct layers read it.
    """
    outputs = set(index.graph_outputs)
    split: dict[str, tuple[str, ...]] = {}
    dequantizer: dict[str, NodeProto] = {}
    for dq in quantized_outputs(index).values():
        if dq.reason:
            continue
        node = index.producer[dq.output]
        own = [dq.data] + ([dq.scale, dq.zero_point] if dq.axis is not None else [])
        if any(t and [id(n) for n in index.const_readers(t)] != [id(node)] for t in own):
            continue  # shared at the integer level too
        if _aliases(index, dq.output) & outputs:
            continue
        readers: dict[str, NodeProto] = {}
        for reader in index.const_readers(dq.output):  # through Identity, as for a constant
            readers.setdefault(reader_key(reader), reader)
        shape = index.const_shape(dq.data)
        if len(readers) < 2 or not shape:
            continue
        if any(reads_as_weight(r, dq.data, len(shape), rules, ctx, index) for r in readers.values()):
            continue
        keys = tuple(reader_key(r) for r in sorted(readers.values(), key=lambda n: order.get(id(n), 0)))
        for t in own:
            if t:
                split[t] = keys
                dequantizer[t] = node
    return split, dequantizer


def dequantizer_for(index: GraphIndex, reader: NodeProto, name: str, copy: str, version: tuple[str, ...],
                    made: dict[tuple[str, tuple[str, ...]], tuple[NodeProto, frozenset[str]]]) -> bool:
    """Point ``reader`` at the ``DequantizeLinear`` of its version, whose input that was ``name`` is ``copy``.

    ``reader`` reads the output of a ``DequantizeLinear`` of ``name`` (through Identity); ``version`` is the
    keys of the readers sharing this version of the constant. The first call for a version makes its
    ``DequantizeLinear`` (a copy of the shared one, placed after it); later calls (the other readers, the
    scale's and zero point's copies) reuse it from ``made``, which also keeps the constants the shared one
    read. Returns False when ``reader`` reads no ``DequantizeLinear`` of ``name``.
    """
    for i, inp in enumerate(reader.input):
        source = index.producer.get(index.resolve_identity(inp)) if inp else None
        if source is None or source.op_type != "DequantizeLinear":
            continue
        dq, reads = made.get((source.output[0], version), (None, frozenset(index.resolve_identity(x)
                                                                           for x in source.input if x)))
        if name not in reads:
            continue  # a DequantizeLinear of another constant
        if dq is None:
            out = index.unique_name(f"{source.output[0]}_{version[0]}")
            position = next(k for k, n in enumerate(index.graph.node) if n is source)
            index.graph.node.insert(position + 1, helper.make_node("DequantizeLinear", list(source.input), [out],
                                                                   name=out))
            dq = index.graph.node[position + 1]  # the graph holds a copy of what was inserted
            dq.attribute.extend(source.attribute)
            index.producer[out] = dq
            made[(source.output[0], version)] = made[(out, version)] = (dq, reads)  # a later pass reads it
        for j, x in enumerate(dq.input):
            if x and index.resolve_identity(x) == name:
                dq.input[j] = copy
        reader.input[i] = dq.output[0]
        return True
    return False
