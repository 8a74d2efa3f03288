"""Test helper: an exact reference for a width cut (``--mode width`` without re-fit).

Width pruning is not exact against the input: every LayerNormalization over a cut stream then normalizes over
the kept channels only. That change is the only one, so it has an exact reference: the original model (already
prepared: frozen shape reads, folded) with every dropped channel's sink weights zeroed (the structured oracle,
:func:`onnxprune.structured.oracle.zeroed_reference`) and every LayerNormalization whose normalized axis lost
positions written out in primitives over a 0/1 mask of the kept positions: mean and variance over the kept
positions, the output masked. Where the group's positions on that axis are not what the cut removes (a wrong
table, a wrong axis), the pruned model and this reference differ.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from oracle_check import assert_close, run_ort

from onnxprune.core.fold import fold_constants
from onnxprune.recovery.width import frozen_stream
from onnxprune.runtime.session import run_constant_graph
from onnxprune.structured.analysis import DependencyGraph, analyze
from onnxprune.structured.axes import ChannelAxis
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.plan import PrunePlan, keep_every_source
from onnxprune.structured.stream import stream_group_ids, stream_rules
from onnxprune.structured.surgery import apply_plan


def masked_norm_reference(model: onnx.ModelProto, dg: DependencyGraph, plan: PrunePlan) -> onnx.ModelProto:
    """The exact reference of a width cut of ``model`` (see the module docstring)."""
    ref = zeroed_reference(model, dg, plan)
    kept = dg.kept_positions(plan.keep)
    nodes = []
    for node in ref.graph.node:
        x = node.input[0] if node.input else ""
        last = len(dg.shapes.get(x) or ()) - 1
        slot = ChannelAxis(x, last)
        if node.op_type != "LayerNormalization" or slot not in kept:
            nodes.append(node)
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        assert next((a.i for a in node.attribute if a.name == "axis"), -1) in (-1, last), node.name
        mask = np.zeros(dg.slot_sizes[slot], np.float32)
        mask[kept[slot]] = 1.0
        p = f"masked_{node.name}"
        ref.graph.initializer.extend([numpy_helper.from_array(mask, f"{p}_m"),
                                      numpy_helper.from_array(np.float32(mask.sum()), f"{p}_k"),
                                      numpy_helper.from_array(np.float32(eps), f"{p}_eps"),
                                      numpy_helper.from_array(np.array([-1], np.int64), f"{p}_axes")])

        def op(kind: str, *inputs: str, _p: str = p, **attrs) -> str:
            out = f"{_p}_{kind}_{len(nodes)}"
            nodes.append(helper.make_node(kind, list(inputs), [out], name=out, **attrs))
            return out

        mean = op("Div", op("ReduceSum", op("Mul", x, f"{p}_m"), f"{p}_axes", keepdims=1), f"{p}_k")
        d = op("Mul", op("Sub", x, mean), f"{p}_m")
        var = op("Div", op("ReduceSum", op("Mul", d, d), f"{p}_axes", keepdims=1), f"{p}_k")
        y = op("Div", d, op("Sqrt", op("Add", var, f"{p}_eps")))
        if len(node.input) > 1 and node.input[1]:
            y = op("Mul", y, node.input[1])
        if len(node.input) > 2 and node.input[2]:
            y = op("Add", y, node.input[2])
        nodes.append(helper.make_node("Mul", [y, f"{p}_m"], [node.output[0]], name=f"{p}_out"))
    del ref.graph.node[:]
    ref.graph.node.extend(nodes)
    return ref


def prepared(model: onnx.ModelProto, dims: dict | None = None) -> onnx.ModelProto:
    """What width mode cuts: constants folded, static shape reads frozen (exact rewrites of the input)."""
    return frozen_stream(fold_constants(model, run_constant_graph).model, dims=dims).model


def half_plan(dg: DependencyGraph, seed: int = 0) -> PrunePlan:
    """Half of every prunable group's channels (at least one) kept at random: every group is cut."""
    r = np.random.default_rng(seed)
    keep = {g.id: keep_every_source(g, np.sort(r.choice(g.size, size=max(1, g.size // 2), replace=False)))
            for g in dg.prunable_groups}
    return PrunePlan(fingerprint=dg.fingerprint, keep=keep, sizes={g.id: g.size for g in dg.prunable_groups},
                     criterion="random-half")


def check_width_cut(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], *, seed: int = 0,
                    dims: dict | None = None, tol: float = 1e-4):
    """Prepare, analyse with the stream's rules, cut half of every group at random, and prove the cut against the masked
    reference on every feed (each may have its own batch size). Returns (prepared model, dg, plan, pruned)."""
    prep = prepared(model, dims)
    dg = analyze(prep, extra_rules=stream_rules(), dims=dims)
    plan = half_plan(dg, seed)
    pruned = apply_plan(prep, plan, dg=dg, extra_rules=stream_rules())  # the rewrites of the analysis' rules
    onnx.checker.check_model(pruned, full_check=True)
    reference = masked_norm_reference(prep, dg, plan)
    for feed in feeds:
        assert_close(run_ort(pruned, feed), run_ort(reference, feed), tol, "width cut vs masked reference")
    return prep, dg, plan, pruned


def stream_groups(model: onnx.ModelProto, dg: DependencyGraph) -> list[int]:
    """The prunable stream groups of an analysis with the stream's rules."""
    return [g for g in stream_group_ids(model, dg) if dg.groups[g].prunable]
