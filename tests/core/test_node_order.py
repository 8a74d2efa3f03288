"""Models whose nodes are out of topological order (onnxruntime runs them; onnx.checker refuses them) are
sorted on load, and then pruned like any other: onnxruntime's own float16 converter makes such models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import make_model, vinfo
from onnx import helper
from oracle_check import check_prune, run_ort, seeded_feeds

from onnxprune.core.errors import ModelLoadError
from onnxprune.core.io import load_model
from onnxprune.core.node_order import in_order, sort_nodes

float16 = pytest.importorskip("onnxruntime.transformers.float16")


def _digits_fp16() -> onnx.ModelProto:
    model = onnx.load("models/digits_cnn.onnx")
    return float16.convert_float_to_float16(model, keep_io_types=True)


def test_onnxruntimes_float16_converter_output_is_sorted_on_load_and_computes_the_same():
    half = _digits_fp16()
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(half)  # the converter's output as it comes: the input cast is placed last
    before = half.SerializeToString()
    loaded = load_model(half)
    assert half.SerializeToString() == before, "the caller's model was modified"
    onnx.checker.check_model(loaded)
    assert sorted(n.SerializeToString() for n in loaded.graph.node) == \
        sorted(n.SerializeToString() for n in half.graph.node), "nodes were changed, not only moved"
    feeds = seeded_feeds(loaded)
    np.testing.assert_array_equal(run_ort(loaded, feeds)[0], run_ort(half, feeds)[0])


def test_a_model_lent_without_a_copy_is_sorted_in_a_copy():
    """``copy=False`` is for callers that only read the model; sorting is a change, so it is made on a copy."""
    half = _digits_fp16()
    before = half.SerializeToString()
    loaded = load_model(half, copy=False)
    assert half.SerializeToString() == before, "the caller's model was modified"
    assert loaded is not half and in_order(loaded.graph) and not in_order(half.graph)
    ordered = load_model(loaded, copy=False)
    assert ordered is loaded, "a model already in order is still lent, not copied"


def test_a_sorted_float16_model_prunes_exactly():
    loaded = load_model(_digits_fp16())
    check_prune(loaded, ratio=0.5)


def test_the_sort_is_stable_and_moves_only_what_must_move():
    nodes = [helper.make_node("Relu", ["b"], ["c"], name="late"),
             helper.make_node("Neg", ["x"], ["a"], name="first"),
             helper.make_node("Abs", ["a"], ["b"], name="second"),
             helper.make_node("Sigmoid", ["x"], ["d"], name="free")]
    graph = make_model(nodes, [vinfo("x", [2])], [vinfo("c", [2]), vinfo("d", [2])], check=False).graph
    assert not in_order(graph)
    assert sort_nodes(graph)
    assert [n.name for n in graph.node] == ["first", "second", "late", "free"]
    assert in_order(graph)
    assert not sort_nodes(graph), "a sorted graph is left as it is"


def test_a_node_read_inside_a_subgraph_is_placed_before_its_reader():
    then = helper.make_graph([helper.make_node("Identity", ["a"], ["t"])], "then", [], [vinfo("t", [2])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [vinfo("e", [2])])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other, name="if"),
             helper.make_node("Neg", ["x"], ["a"], name="makes_a")]
    cond = helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])
    model = make_model(nodes, [vinfo("x", [2]), cond], [vinfo("y", [2])], check=False)
    assert not in_order(model.graph), "the subgraph's outer-scope read counts"
    loaded = load_model(model)
    assert [n.name for n in loaded.graph.node] == ["makes_a", "if"]
    assert in_order(loaded.graph)


def test_a_cycle_is_still_refused_with_the_checkers_reason():
    nodes = [helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])]
    model = make_model(nodes, [vinfo("x", [2])], [vinfo("b", [2])], check=False)
    with pytest.raises(ModelLoadError, match="fails onnx.checker"):
        load_model(model)
