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


def test_folding_after_a_fused_op_keeps_its_declared_output() -> None:
    """The second layer of an optimized BERT: attention after a fused SkipLayerNormalization, its head split
    a Reshape to a run-time target read from the fused op's output. Shape folding re-infers the graph with the
    folded values; it must keep the fused op's declared output shape, or everything after it (the scores,
    the softmax, the second layer's heads) stays unknown."""
    nodes = [
        helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["h"], domain=MS, epsilon=1e-5),
        helper.make_node("Shape", ["h"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["bu"]),
        helper.make_node("Gather", ["s", "i2"], ["w"], axis=0),
        helper.make_node("Div", ["w", "n_heads"], ["hd"]),  # head_dim = width / heads: only folding computes it
        helper.make_node("Unsqueeze", ["hd", "ax0"], ["hdu"]),
        helper.make_node("Concat", ["bu", "minus1", "heads", "hdu"], ["target"], axis=0),  # view(b, -1, 4, hd)
        helper.make_node("Reshape", ["h", "target"], ["r"]),
        helper.make_node("Transpose", ["r"], ["q"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["r"], ["k"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["q", "k"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["out"], axis=-1),
    ]
    consts = {"i0": np.array(0), "i2": np.array(2), "ax0": np.array([0]), "heads": np.array([4]),
              "n_heads": np.array(4), "minus1": np.array([-1])}
    inits = [numpy_helper.from_array(v.astype(np.int64), k) for k, v in consts.items()]
    inits += [numpy_helper.from_array(np.ones(D, np.float32), n) for n in ("gamma", "beta")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, 1, ["batch", "seq", D])
                                           for n in ("x", "skip")],
                              [helper.make_tensor_value_info("out", 1, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    shapes = infer_shapes(model, {"batch": 2, "seq": 3})
    assert shapes["scores"] == (2, 4, 3, 3) and shapes["out"] == (2, 4, 3, 3)
    feeds = {n: np.ones((2, 3, D), np.float32) for n in ("x", "skip")}
    got = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    assert got.shape == (2, 4, 3, 3)  # what onnxruntime computes
