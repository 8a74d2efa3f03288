"""Dynamic input dims in the IR: ``-1`` is unknown, dims are addressed by name or ``INPUT:AXIS``."""

from __future__ import annotations

import onnx
from builders import declare_shape, paddle_classifier, vinfo

from onnxprune.core.ir import input_shapes, lookup_dim, shape_of_type, shape_skeleton
from onnxprune.core.stats import model_stats


def _dims(vi: onnx.ValueInfoProto) -> list[object]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def test_minus_one_is_a_dynamic_dim_not_a_size():
    vi = declare_shape(vinfo("x", [1]), [-1, 3, "?", None])
    assert shape_of_type(vi.type) == (None, 3, "?", None)
    assert input_shapes(paddle_classifier())["x"] == (None, 3, "?", None)


def test_lookup_dim_prefers_the_axis_then_input_and_name_then_name():
    dims = {"x:2": 5, "x:H": 6, "H": 7, "y:0": 9}
    assert lookup_dim(dims, "x", 2, "H") == 5
    assert lookup_dim(dims, "x", 3, "H") == 6
    assert lookup_dim(dims, "z", 3, "H") == 7
    assert lookup_dim(dims, "x", 0, None) is None
    assert lookup_dim(dims, "y", 0, None) == 9
    assert lookup_dim({"": 3}, "x", 1, "") is None  # an unnamed dim is never matched by an empty name


def test_skeleton_fixes_each_axis_and_never_keeps_minus_one():
    skel = shape_skeleton(paddle_classifier(), {"x:2": 16, "x:3": 20})
    assert _dims(skel.graph.input[0]) == [1, 3, 16, 20]
    assert _dims(skel.graph.output[0]) == ["p2o.DynamicDimension.1", 5]


def test_skeleton_question_mark_on_two_axes_is_not_one_value_downstream():
    """'?' on H and W with different sizes: a value_info '?' must not take either."""
    model = paddle_classifier()
    declare_shape(model.graph.input[0], [-1, 3, "?", "?"])
    model.graph.value_info.append(vinfo("relu_5", ["?", 8, 8, 8]))
    skel = shape_skeleton(model, {"x:2": 16, "x:3": 20}, value_info=["relu_5"])
    assert _dims(skel.graph.input[0]) == [1, 3, 16, 20]
    assert _dims(skel.graph.value_info[0]) == ["?", 8, 8, 8]


def test_skeleton_keep_symbolic_leaves_dynamic_dims_as_declared():
    model = paddle_classifier()
    declare_shape(model.graph.input[0], ["batch", 3, "H", "W"])
    assert _dims(shape_skeleton(model, keep_symbolic=True).graph.input[0]) == ["batch", 3, "H", "W"]
    assert _dims(shape_skeleton(model).graph.input[0]) == [1, 3, 1, 1]


def test_macs_of_a_minus_one_model_are_never_negative():
    """Issue: analyze printed -123,672 MACs on a Paddle classifier (-1 taken as the batch size)."""
    stats = model_stats(paddle_classifier())
    assert stats.macs > 0 and all(v > 0 for v in stats.macs_by_node.values())


def test_ancestors_follow_values_and_stop_at_a_shape_read_only_when_asked() -> None:
    """``y = Reshape(x, Shape(z))``: z feeds y's value only through its shape."""
    from onnx import TensorProto, helper

    from onnxprune.core.ir import GraphIndex

    nodes = [helper.make_node("Relu", ["z"], ["r"]), helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Reshape", ["x", "s"], ["y"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("x", "z", "y")]
    idx = GraphIndex(helper.make_model(helper.make_graph(nodes, "g", io[:2], io[2:])))
    assert idx.ancestors(["y"]) == {"y", "x", "s", "r", "z"}
    assert idx.ancestors(["y"], through_shape=False) == {"y", "x", "s"}
    assert idx.ancestors([]) == set()


def test_strict_shape_inference_of_a_file_whose_integer_table_is_stored_externally(tmp_path) -> None:
    """A vocabulary's id map (``Gather(int64 table, ids)``) saved with external data: onnx reads an integer
    initializer as shape data and cannot from an external file; the skeleton types it as an input instead."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.core.io import load_structure, save_model
    from onnxprune.core.shapefold import infer_shapes

    table = numpy_helper.from_array(np.arange(500, dtype=np.int64)[::-1].copy(), "id_map")
    graph = helper.make_graph([helper.make_node("Gather", ["id_map", "ids"], ["new_ids"])], "g",
                              [vinfo("ids", ["B", 4], TensorProto.INT64)],
                              [vinfo("new_ids", ["B", 4], TensorProto.INT64)], [table])
    path = save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx",
                      external_data=True)
    model = load_structure(path)
    assert model.graph.initializer[0].data_location == TensorProto.EXTERNAL
    assert infer_shapes(model, {}, strict=True)["new_ids"] == (1, 4)
