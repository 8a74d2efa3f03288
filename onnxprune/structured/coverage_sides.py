"""Which sides of which weighted layers a dependency graph lets a cut reach, and why the others stay.

Why a module of its own: coverage (:func:`onnxprune.structured.prune.coverage`) is one number; to say what
keeps it below 1 (a graph output, an op without a rule, the model's interface) every layer side must be
listed with its MACs and its group's first blocker. Each weighted layer with a constant (or quantized)
weight counts half its MACs for its input side and half for its output side.

A side is *interface* when its channels are the model's own inputs or outputs: its group holds a graph
input or output and no norm normalises over it (the vocabulary axis of an LM head's logits, a classifier's
classes), or it has no group and reaches a graph input through ops without weights (the colour channels of
an image, the samples of raw audio). Cutting those changes what the model takes or gives, so no mode
prunes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from onnx import ModelProto

from onnxprune.core.ir import GraphIndex, attr
from onnxprune.core.quant import quantized_outputs
from onnxprune.core.shapefold import infer_shapes
from onnxprune.core.stats import WEIGHTED_OPS, node_macs
from onnxprune.structured.analysis import DependencyGraph
from onnxprune.structured.axes import ChannelAxis


@dataclass(frozen=True)
class Side:
    """One side of a weighted layer.

    Attributes:
        node: the layer's name (or first output).
        side: ``"in"`` or ``"out"``.
        axis: the channel axis of the layer's input or output.
        macs: half the layer's MACs.
        covered: whether every group of the axis is prunable.
        blocker: the first blocker of its first blocked group (``"no group"`` when it has none).
        groups: the ids of the axis' groups.
    """

    node: str
    side: str
    axis: ChannelAxis
    macs: float
    covered: bool
    blocker: str
    groups: tuple[int, ...]


def layer_sides(model: ModelProto, dg: DependencyGraph, shapes: dict | None = None) -> list[Side]:
    """Both sides of every weighted layer with a constant or quantized weight and known MACs."""
    index = GraphIndex(model)
    quantized = {out for out, dq in quantized_outputs(index).items() if not dq.reason}
    shapes = shapes if shapes is not None else infer_shapes(model)
    out: list[Side] = []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or not (
                index.is_constant(node.input[1]) or node.input[1] in quantized):
            continue
        macs = node_macs(node, shapes, index.opset)
        if not macs:
            continue
        x, y = node.input[0], node.output[0]
        rank_x, rank_y = len(shapes.get(x, ())), len(shapes.get(y, ()))
        if node.op_type in ("MatMul", "Attention"):  # Attention: onnxruntime's, with a packed Q/K/V weight
            axes = [(x, rank_x - 1), (y, rank_y - 1)]
        elif node.op_type == "Gemm":
            axes = [(x, 0 if attr(node, "transA", index.opset) else 1), (y, 1)]
        else:
            axes = [(x, 1), (y, 1)]
        for side, (tensor, a) in zip(("in", "out"), axes, strict=True):
            slot = ChannelAxis(tensor, a)
            gids = tuple(dg.group_of(slot))
            blocked = [g for g in gids if not dg.groups[g].prunable]
            covered = bool(gids) and not blocked
            why = "" if covered else (dg.groups[blocked[0]].blockers[0] if blocked else "no group")
            out.append(Side(node.name or y, side, slot, macs / 2, covered, why, gids))
    return out


def interface_sides(model: ModelProto, dg: DependencyGraph, sides: Iterable[Side],
                    streams: Iterable[int] = ()) -> set[tuple[str, str]]:
    """``(node, side)`` of the uncovered sides whose channels are the model's interface (module doc).

    ``streams``: the groups a norm normalises over (a residual stream that is a graph output is not
    interface: width mode keeps the output's width by an appended projection).
    """
    index = GraphIndex(model)
    boundary = set(index.graph_outputs) | {i.name for i in model.graph.input if i.name not in index.initializers}
    stream_ids = set(streams)
    result: set[tuple[str, str]] = set()
    for s in sides:
        if s.covered:
            continue
        if s.groups:
            touches = any(m.tensor in boundary for g in s.groups for m in dg.groups[g].members)
            if touches and not stream_ids.intersection(s.groups):
                result.add((s.node, s.side))
        elif s.side == "in" and _from_input(index, s.axis.tensor, boundary):
            result.add((s.node, s.side))
    return result


def _from_input(index: GraphIndex, tensor: str, inputs: set[str]) -> bool:
    """Whether ``tensor`` is computed from graph inputs by ops without weights of their own (a cast, an
    unsqueeze, a transpose of the image)."""
    seen: set[str] = set()
    todo = [tensor]
    while todo:
        t = todo.pop()
        if t in inputs:
            return True
        if t in seen:
            continue
        seen.add(t)
        node = index.producer.get(t)
        if node is None or node.op_type in WEIGHTED_OPS:
            continue
        todo.extend(i for i in node.input[:1] if i)
    return False
