"""Dependency analysis: groups, members, blockers and index maps on small graphs."""

from __future__ import annotations

import re

import builders
import numpy as np
import pytest
from onnx import helper

from onnxprune.core.errors import UnsupportedModelError
from onnxprune.structured.analysis import analyze, connected_components
from onnxprune.structured.axes import Block, ChannelAxis, Offset


def test_conv_bn_relu_has_one_prunable_group_and_blocked_output() -> None:
    dg = analyze(builders.conv_bn_relu(c_mid=8))
    assert [(g.size, g.prunable) for g in dg.groups] == [(8, True), (6, False)]
    g = dg.groups[0]
    assert {c.tensor for c in g.sources} == {"w1"} and {c.tensor for c in g.sinks} == {"w2"}
    assert {c.tensor for c in g.cuts if c.role == "param"} == {"b1", "gamma", "beta", "mean", "var"}
    assert "graph output" in dg.groups[1].blockers[0]
    assert dg.group_of(ChannelAxis("r1", 1)) == (0,)


def test_residual_add_merges_both_branches() -> None:
    dg = analyze(builders.residual_add())
    merged = [g for g in dg.groups if len(g.sources) == 2]
    assert len(merged) == 1 and merged[0].prunable


def test_concat_then_split_gives_offsets() -> None:
    dg = analyze(builders.concat_split())
    a, b = dg.groups[0], dg.groups[1]
    cat = next(s for s in a.members if s.tensor.startswith("concat"))
    assert a.members[cat].forward(np.arange(6)).tolist() == list(range(6))
    assert b.members[cat] == Offset(6, 4)
    assert a.size == 6 and b.size == 4


def test_flatten_folds_channels_into_blocks() -> None:
    dg = analyze(builders.flatten_gemm(c=4, hw=3))
    g = dg.groups[0]
    sink = g.sinks[0]
    assert sink.map == Block(9) and sink.positions(np.array([1])).tolist() == list(range(9, 18))


def test_graph_output_and_unknown_op_block() -> None:
    g = builders.GraphBuilder()
    y = g.op("Relu", [g.conv("x", 3, 4)])
    g.nodes.append(helper.make_node("LpNormalization", [y], ["out"], name="lpn", axis=1))
    model = g.build([builders.vinfo("x", [1, 3, 4, 4])], [builders.vinfo("out", [1, 4, 4, 4])])
    dg = analyze(model)
    reasons = " ".join(dg.groups[0].blockers)
    assert not dg.groups[0].prunable and "no rule for op 'LpNormalization'" in reasons


def test_explain_and_summary_name_the_layers() -> None:
    dg = analyze(builders.conv_bn_relu())
    text = dg.explain(0)
    assert "conv1" in text and "conv2" in text and "sinks" in text
    assert "prunable" in dg.summary()


def test_empty_graph_is_refused() -> None:
    model = helper.make_model(helper.make_graph([], "g", [], []))
    with pytest.raises(UnsupportedModelError, match="no nodes"):
        analyze(model)


def test_connected_components_matches_union_find() -> None:
    r = np.random.default_rng(0)
    n = 200
    a, b = r.integers(0, n, 150), r.integers(0, n, 150)
    labels = connected_components(n, a, b)
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a, b, strict=True):
        parent[find(int(x))] = find(int(y))
    for x in range(n):
        for y in range(0, n, 17):
            assert (labels[x] == labels[y]) == (find(x) == find(y))


def test_declared_value_info_fills_gaps_but_never_overrides_inference() -> None:
    from onnxprune.core.shapefold import infer_shapes

    model = builders.custom_op_flatten(declare=True)
    gelu_out = next(n for n in model.graph.node if n.op_type == "Trilu").output[0]
    conv2_out = next(n for n in model.graph.node if n.input and n.input[0] == gelu_out).output[0]
    assert gelu_out not in infer_shapes(builders.custom_op_flatten(declare=False))
    shapes = infer_shapes(model)
    assert shapes[gelu_out] == (1, 4, 3, 3) and shapes[conv2_out] == (1, 4, 3, 3)  # inferred on past it
    # A stale declaration of a tensor onnx can infer (conv1's output) loses to inference.
    conv1_out = model.graph.node[0].output[0]
    model.graph.value_info.append(helper.make_tensor_value_info(conv1_out, 1, [1, 7, 3, 3]))
    assert infer_shapes(model)[conv1_out] == (1, 4, 3, 3)
    assert analyze(model).summary() == analyze(builders.custom_op_flatten(declare=True)).summary()


def test_custom_domain_op_with_a_standard_name_is_not_taken_as_same_shape() -> None:
    dg = analyze(builders.custom_op_chain(custom_first=True))
    gelu = next(n for n in builders.custom_op_chain(custom_first=True).graph.node if n.op_type == "Trilu")
    assert gelu.output[0] not in dg.shapes  # com.microsoft Trilu: no schema, so no shape is assumed
    assert [g.prunable for g in dg.groups] == [False, True, False]
    assert dg.unanalysed == ()


def test_layer_that_cannot_be_sized_is_reported_not_dropped() -> None:
    g = builders.GraphBuilder(0)
    h = g.op("MatMul", ["x", g.weight((4, 6))])
    h = g.op("Trilu", [h])
    g.nodes[-1].domain = "com.microsoft"
    h = g.op("MatMul", [h, g.weight((6, 3))])
    g.nodes.append(helper.make_node("Relu", [h], ["out"], name="act"))
    graph = helper.make_graph(g.nodes, "t", [builders.vinfo("x", [2, 4])], [builders.vinfo("out", None)], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", builders.OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)])
    dg = analyze(model)
    assert len(dg.unanalysed) == 1
    assert re.search(r"'MatMul_\d+' \(MatMul\): its output channels were not analysed: the rank of 'matmul_\d+' is "
                     r"unknown", dg.unanalysed[0])
    assert "not analysed: 'MatMul_" in dg.summary()
