"""Tiny seeded test models built with ``onnx.helper``.

Every builder returns a checked ``ModelProto`` with float32 weights drawn from a seeded generator, so a
failing test reproduces exactly. Add new builders here rather than inside test files.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def make_model(nodes, inputs, outputs, initializers=(), *, opset: int = OPSET, name: str = "test") -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxprune-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def vinfo(name: str, shape, dtype=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape) if shape is not None else None)


def conv_bn_relu(seed: int = 0, c_in: int = 3, c_mid: int = 8, c_out: int = 6, hw: int = 8) -> onnx.ModelProto:
    """x → Conv(c_mid) → BN → Relu → Conv(c_out, 3x3, pad 1) → out."""
    r = rng(seed)
    inits = [
        init("w1", r.standard_normal((c_mid, c_in, 3, 3)).astype(np.float32)),
        init("b1", r.standard_normal(c_mid).astype(np.float32)),
        init("gamma", r.uniform(0.5, 1.5, c_mid).astype(np.float32)),
        init("beta", r.standard_normal(c_mid).astype(np.float32)),
        init("mean", r.standard_normal(c_mid).astype(np.float32)),
        init("var", r.uniform(0.5, 1.5, c_mid).astype(np.float32)),
        init("w2", r.standard_normal((c_out, c_mid, 3, 3)).astype(np.float32)),
        init("b2", r.standard_normal(c_out).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["out"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    return make_model(nodes, [vinfo("x", [1, c_in, hw, hw])], [vinfo("out", [1, c_out, hw, hw])], inits)


def mlp(seed: int = 0, d_in: int = 16, hidden: int = 32, d_out: int = 10, batch: int | str = "N") -> onnx.ModelProto:
    """x → Gemm(transB=1) → Relu → MatMul → Add → out: both weight layouts in one graph."""
    r = rng(seed)
    inits = [
        init("fc1_w", r.standard_normal((hidden, d_in)).astype(np.float32)),
        init("fc1_b", r.standard_normal(hidden).astype(np.float32)),
        init("fc2_w", r.standard_normal((hidden, d_out)).astype(np.float32)),
        init("fc2_b", r.standard_normal(d_out).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "fc1_w", "fc1_b"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("MatMul", ["hr", "fc2_w"], ["m"], name="fc2"),
        helper.make_node("Add", ["m", "fc2_b"], ["out"], name="fc2_bias"),
    ]
    return make_model(nodes, [vinfo("x", [batch, d_in])], [vinfo("out", [batch, d_out])], inits)


def conv_relu_conv(seed: int = 0, c_in: int = 4, c_mid: int = 6, c_out: int = 5, hw: int = 9, *,
                   kernel: int = 3, stride: int = 1, dilation: int = 1, group: int = 1, pads: int | None = 1,
                   auto_pad: str | None = None, batch: int | str = "N") -> onnx.ModelProto:
    """x → Conv(c_mid; kernel/stride/dilation/group/pads as given, name conv1) → Relu → Conv 1x1 (conv2) → out.

    Dynamic batch by default, for calibration tests over any Conv geometry.
    """
    r = rng(seed)
    inits = [
        init("w1", r.standard_normal((c_mid, c_in // group, kernel, kernel)).astype(np.float32)),
        init("b1", r.standard_normal(c_mid).astype(np.float32)),
        init("w2", r.standard_normal((c_out, c_mid, 1, 1)).astype(np.float32)),
        init("b2", r.standard_normal(c_out).astype(np.float32)),
    ]
    attrs: dict[str, object] = {"strides": [stride, stride], "dilations": [dilation, dilation], "group": group}
    if auto_pad is not None:
        attrs["auto_pad"] = auto_pad
    elif pads is not None:
        attrs["pads"] = [pads] * 4
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", **attrs),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["out"], name="conv2"),
    ]
    span = (kernel - 1) * dilation + 1
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out_hw = -(-hw // stride)
    else:
        out_hw = (hw + 2 * (pads if auto_pad is None and pads is not None else 0) - span) // stride + 1
    return make_model(nodes, [vinfo("x", [batch, c_in, hw, hw])], [vinfo("out", [batch, c_out, out_hw, out_hw])],
                      inits)


# -- sparsity builders (tests/test_weights.py, test_sparsify.py, test_sparse_storage.py) ---------------
def shared_weight_convs(seed: int = 0, c: int = 4, hw: int = 6) -> onnx.ModelProto:
    """Two Convs reading one weight ``w`` (the second through Identity), plus BN and a bias.

    x → conv_a(w, b) → BN → out_a;  x → conv_b(Identity(w)) → out_b.
    """
    r = rng(seed)
    inits = [
        init("w", r.standard_normal((c, c, 3, 3)).astype(np.float32)),
        init("b", r.standard_normal(c).astype(np.float32)),
        init("gamma", r.uniform(0.5, 1.5, c).astype(np.float32)),
        init("beta", r.standard_normal(c).astype(np.float32)),
        init("mean", r.standard_normal(c).astype(np.float32)),
        init("var", r.uniform(0.5, 1.5, c).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["ca"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["ca", "gamma", "beta", "mean", "var"], ["out_a"], name="bn_a"),
        helper.make_node("Identity", ["w"], ["w_id"], name="w_identity"),
        helper.make_node("Conv", ["x", "w_id"], ["out_b"], name="conv_b", pads=[1, 1, 1, 1]),
    ]
    return make_model(nodes, [vinfo("x", [1, c, hw, hw])],
                      [vinfo("out_a", [1, c, hw, hw]), vinfo("out_b", [1, c, hw, hw])], inits)


def constant_weight_mlp(seed: int = 0, d_in: int = 8, d_out: int = 12) -> onnx.ModelProto:
    """MatMul whose weight is a ``Constant`` node read through Identity, then a Constant bias Add."""
    r = rng(seed)
    w = r.standard_normal((d_in, d_out)).astype(np.float32)
    b = r.standard_normal(d_out).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["cw"], name="const_w", value=numpy_helper.from_array(w)),
        helper.make_node("Identity", ["cw"], ["cw_id"], name="cw_identity"),
        helper.make_node("Constant", [], ["cb"], name="const_b", value=numpy_helper.from_array(b)),
        helper.make_node("MatMul", ["x", "cw_id"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "cb"], ["out"], name="fc_bias"),
    ]
    return make_model(nodes, [vinfo("x", ["N", d_in])], [vinfo("out", ["N", d_out])])


def gemm_stack(seed: int = 0, d_in: int = 16, hidden: int = 24, d_out: int = 8,
               dtype: type = np.float32, batched: int = 2) -> onnx.ModelProto:
    """Every dense weight layout: Gemm transB=0 (W [K, N]), Gemm transB=1 (W [N, K]) and a batched MatMul
    (W [B, K, N]), in ``dtype`` (float32, float16 or float64).

    x [N, d_in] → gemm0 → Relu → gemm1 → out;  y [B, 3, d_out] → bmm → out2 (a second, independent branch).
    """
    r = rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [
        init("g0_w", r.standard_normal((d_in, hidden)).astype(dtype)),
        init("g0_b", r.standard_normal(hidden).astype(dtype)),
        init("g1_w", r.standard_normal((d_out, hidden)).astype(dtype)),
        init("g1_b", r.standard_normal(d_out).astype(dtype)),
        init("bm_w", r.standard_normal((batched, d_out, d_out)).astype(dtype)),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "g0_w", "g0_b"], ["h"], name="gemm0", transB=0),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "g1_w", "g1_b"], ["out"], name="gemm1", transB=1),
        helper.make_node("MatMul", ["y", "bm_w"], ["out2"], name="bmm"),
    ]
    return make_model(
        nodes,
        [vinfo("x", ["N", d_in], elem), vinfo("y", [batched, 3, d_out], elem)],
        [vinfo("out", ["N", d_out], elem), vinfo("out2", [batched, 3, d_out], elem)],
        inits,
    )


def conv_transpose(seed: int = 0, c_in: int = 8, c_out: int = 4, group: int = 1, hw: int = 4) -> onnx.ModelProto:
    """x → ConvTranspose(W [c_in, c_out/group, 3, 3], stride 2) → out."""
    r = rng(seed)
    inits = [init("wt", r.standard_normal((c_in, c_out // group, 3, 3)).astype(np.float32))]
    nodes = [helper.make_node("ConvTranspose", ["x", "wt"], ["out"], name="deconv", strides=[2, 2], group=group)]
    out_hw = (hw - 1) * 2 + 3
    return make_model(nodes, [vinfo("x", [1, c_in, hw, hw])], [vinfo("out", [1, c_out, out_hw, out_hw])], inits)


def weight_misused(seed: int = 0, d: int = 6) -> onnx.ModelProto:
    """Weight-like tensors that must never be pruned: ``wa`` is also added as a bias, ``wo`` is also a
    graph output (through Identity), ``wi`` is an int32 MatMul weight; ``wk`` is a plain weight."""
    r = rng(seed)
    inits = [
        init("wa", r.standard_normal((d, d)).astype(np.float32)),
        init("wo", r.standard_normal((d, d)).astype(np.float32)),
        init("wk", r.standard_normal((d, d)).astype(np.float32)),
        init("wi", r.integers(-3, 4, (d, d)).astype(np.int32)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["m1"], name="mm_a"),
        helper.make_node("Add", ["m1", "wa"], ["a1"], name="add_a"),
        helper.make_node("MatMul", ["a1", "wo"], ["m2"], name="mm_o"),
        helper.make_node("Identity", ["wo"], ["wo_out"], name="wo_identity"),
        helper.make_node("MatMul", ["m2", "wk"], ["out"], name="mm_k"),
        helper.make_node("MatMul", ["xi", "wi"], ["out_i"], name="mm_i"),
    ]
    return make_model(
        nodes,
        [vinfo("x", [d, d]), vinfo("xi", [2, d], TensorProto.INT32)],
        [vinfo("out", [d, d]), vinfo("wo_out", [d, d]), vinfo("out_i", [2, d], TensorProto.INT32)],
        inits,
    )


def two_heads(seed: int = 0, d_in: int = 8, hidden: int = 12, classes: int = 10, batch: int | str = "N") -> onnx.ModelProto:
    """x → Gemm → Relu → {Gemm → ``logits`` [N, classes], MatMul → ``embed`` [N, 4]}: two outputs, one of
    them class scores, for validation tests."""
    r = rng(seed)
    inits = [
        init("h_w", r.standard_normal((d_in, hidden)).astype(np.float32)),
        init("h_b", r.standard_normal(hidden).astype(np.float32)),
        init("cls_w", r.standard_normal((hidden, classes)).astype(np.float32)),
        init("cls_b", r.standard_normal(classes).astype(np.float32)),
        init("emb_w", r.standard_normal((hidden, 4)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "h_w", "h_b"], ["h"], name="hidden"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "cls_w", "cls_b"], ["logits"], name="classifier"),
        helper.make_node("MatMul", ["hr", "emb_w"], ["embed"], name="embedding"),
    ]
    return make_model(nodes, [vinfo("x", [batch, d_in])],
                      [vinfo("logits", [batch, classes]), vinfo("embed", [batch, 4])], inits)


def seq_tokens(seed: int = 0, vocab: int = 8, d: int = 6) -> onnx.ModelProto:
    """ids int64 [N, seq] → Gather(embedding) → MatMul → out [N, seq, d]; plus a float ``scale`` [N, 1, 1]
    input: dynamic non-batch dims and integer inputs, for feed-generation tests."""
    r = rng(seed)
    inits = [
        init("emb", r.standard_normal((vocab, d)).astype(np.float32)),
        init("proj", r.standard_normal((d, d)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "proj"], ["p"], name="proj"),
        helper.make_node("Mul", ["p", "scale"], ["out"], name="scale_mul"),
    ]
    return make_model(
        nodes,
        [vinfo("ids", ["N", "seq"], TensorProto.INT64), vinfo("scale", ["N", 1, 1])],
        [vinfo("out", ["N", "seq", d])],
        inits,
    )


def mixed_precision(seed: int = 0, d: int = 8) -> onnx.ModelProto:
    """x → MatMul(w32, float32) → Cast(float16) → MatMul(w16, float16) → out: two weight dtypes in one graph."""
    r = rng(seed)
    inits = [
        init("w32", r.standard_normal((d, d)).astype(np.float32)),
        init("w16", r.standard_normal((d, d)).astype(np.float16)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w32"], ["m"], name="mm32"),
        helper.make_node("Cast", ["m"], ["m16"], name="cast", to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["m16", "w16"], ["out"], name="mm16"),
    ]
    return make_model(nodes, [vinfo("x", [2, d])], [vinfo("out", [2, d], TensorProto.FLOAT16)], inits)


def matmul_chain(seed: int = 0, d_in: int = 10, hidden: int = 12, d_out: int = 6) -> onnx.ModelProto:
    """x [N, d_in] → MatMul(w1) → Relu (r) → MatMul(w2) → out: layers without any bias."""
    r = rng(seed)
    inits = [
        init("w1", r.standard_normal((d_in, hidden)).astype(np.float32)),
        init("w2", r.standard_normal((hidden, d_out)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["out"], name="mm2"),
    ]
    return make_model(nodes, [vinfo("x", ["N", d_in])], [vinfo("out", ["N", d_out])], inits)
