"""Shapes of onnxruntime's fused ops, which onnx's inference does not know (core/contrib_shapes.py), and
their place in the shape-inference loop (core/ir.infer_static_shapes)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxprune.core.contrib_shapes import contrib_outputs
from onnxprune.core.shapefold import infer_shapes

D = 16
MS = "com.microsoft"


def _node(op: str, inputs: list[str], n_out: int = 1, **attrs):
    return helper.make_node(op, inputs, [f"y{i}" for i in range(n_out)], domain=MS, **attrs)


def test_attention_output_width_is_v_from_qkv_hidden_sizes_or_a_third() -> None:
    shapes = {"x": (2, 5, D), "w": (D, 3 * D), "w2": (D, 40)}
    assert contrib_outputs(_node("Attention", ["x", "w"], num_heads=4), shapes, {"x": 1}) == {"y0": (1, (2, 5, D))}
    node = _node("Attention", ["x", "w2"], num_heads=4, qkv_hidden_sizes=[12, 12, 16])
    assert contrib_outputs(node, shapes, {"x": 1}) == {"y0": (1, (2, 5, 16))}


def test_group_query_attention_packed_and_separate_with_its_kv_cache() -> None:
    shapes = {"q": (2, 5, 64), "k": (2, 5, 16), "qkv": (2, 5, 96)}
    separate = contrib_outputs(_node("GroupQueryAttention", ["q", "k", "k"], 3, num_heads=4, kv_num_heads=2),
                               shapes, {"q": 1})
    packed = contrib_outputs(_node("GroupQueryAttention", ["qkv"], 3, num_heads=4, kv_num_heads=2), shapes, {"qkv": 1})
    assert separate["y0"] == (1, (2, 5, 64)) and separate["y1"] == (1, (2, 2, None, 16))
    assert packed["y0"] == (1, (2, 5, 48))  # 96 = (4 + 2*2) heads of 12; the output has the 4 query heads
    assert packed["y1"] == (1, (2, 2, None, 12))


def test_multi_head_attention_value_layouts() -> None:
    shapes = {"q": (2, 5, D), "v3": (2, 7, 24), "v4": (2, 4, 7, 6)}
    assert contrib_outputs(_node("MultiHeadAttention", ["q", "v3", "v3"], num_heads=4), shapes,
                           {"q": 1})["y0"] == (1, (2, 5, 24))
    assert contrib_outputs(_node("MultiHeadAttention", ["q", "v4", "v4"], num_heads=4), shapes,
                           {"q": 1})["y0"] == (1, (2, 5, 24))


def test_standard_and_other_domains_are_never_sized() -> None:
    node = helper.make_node("Gelu", ["x"], ["y"], domain="my.domain")
    assert contrib_outputs(node, {"x": (1, 2)}, {"x": 1}) == {}
    assert contrib_outputs(helper.make_node("Relu", ["x"], ["y"]), {"x": (1, 2)}, {"x": 1}) == {}


def test_a_fused_op_whose_input_only_folding_sizes_is_sized_after_it() -> None:
    # x [batch, seq, 16] -> Reshape to a runtime target (seq * 16 / 4 computed with Div, which onnx's data
    # propagation leaves unknown and folding computes) -> Reshape back -> MatMul -> BiasGelu -> MatMul
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i2"], ["c"], axis=0),
        helper.make_node("Div", ["c", "four"], ["q"]),
        helper.make_node("Unsqueeze", ["q", "ax0"], ["qu"]),
        helper.make_node("Concat", ["lead", "qu", "four1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Reshape", ["r", "back"], ["x2"]),
        helper.make_node("MatMul", ["x2", "w"], ["m"]),
        helper.make_node("BiasGelu", ["m", "b"], ["g"], domain=MS),
        helper.make_node("MatMul", ["g", "w2"], ["out"]),
    ]
    consts = {"i2": np.array(2), "four": np.array(4), "ax0": np.array([0]), "lead": np.array([-1]),
              "four1": np.array([4]), "back": np.array([1, -1, D])}
    inits = [numpy_helper.from_array(v.astype(np.int64), k) for k, v in consts.items()]
    inits += [numpy_helper.from_array(np.ones(shape, np.float32), name)
              for name, shape in (("w", (D, 24)), ("b", (24,)), ("w2", (24, D)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, ["batch", "seq", D])],
                              [helper.make_tensor_value_info("out", 1, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    shapes = infer_shapes(model, {"batch": 2, "seq": 3})
    assert shapes["g"] == (1, 6, 24) and shapes["out"] == (1, 6, D)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.ones((2, 3, D), np.float32)})[0]
    assert got.shape == (1, 6, D)  # what onnxruntime computes
