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


def make_model(nodes, inputs, outputs, initializers=(), *, opset: int = OPSET, name: str = "test",
               domains: tuple[str, ...] = (), value_info=(), check: bool = True) -> onnx.ModelProto:
    """A checked ir-8 model; ``domains`` are custom op domains imported at version 1 (checked without
    strict inference, which cannot type their ops); ``check=False`` skips the checker for big models."""
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers),
                              value_info=list(value_info))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="onnxprune-tests")
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model, full_check=not domains)
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


def conv_chain(c_in: int, c1: int, c2: int, c_out: int = 16, hw: int = 8) -> onnx.ModelProto:
    """x (c_in) → Conv 3x3 c1 (c1) → Relu → Conv 3x3 c2 (c2) → Relu → Conv 1x1 c_out (c3) → out; batch 1, no
    biases: two prunable groups (c1, c2) whose widths the latency tests time."""
    r = rng(0)
    inits = [init("w1", r.standard_normal((c1, c_in, 3, 3)).astype(np.float32)),
             init("w2", r.standard_normal((c2, c1, 3, 3)).astype(np.float32)),
             init("w3", r.standard_normal((c_out, c2, 1, 1)).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["ra"], name="r1"),
             helper.make_node("Conv", ["ra", "w2"], ["b"], name="c2", pads=[1] * 4),
             helper.make_node("Relu", ["b"], ["rb"], name="r2"),
             helper.make_node("Conv", ["rb", "w3"], ["out"], name="c3")]
    return make_model(nodes, [vinfo("x", [1, c_in, hw, hw])], [vinfo("out", [1, c_out, hw, hw])], inits)


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


def two_heads(seed: int = 0, d_in: int = 8, hidden: int = 12, classes: int = 10,
              batch: int | str = "N") -> onnx.ModelProto:
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


# -- structured-pruning builders (graph builder + small networks) -----------------------------------
class GraphBuilder:
    """Append nodes with auto-named outputs and seeded weights; ``build`` returns a checked model."""

    def __init__(self, seed: int = 0, opset: int = OPSET) -> None:
        self.r = rng(seed)
        self.opset = opset
        self.nodes: list = []
        self.inits: list = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, array, base: str = "c") -> str:
        n = self.name(base)
        self.inits.append(init(n, np.asarray(array)))
        return n

    def weight(self, shape, base: str = "w", low: float | None = None) -> str:
        if low is not None:
            value = self.r.uniform(low, low + 1.0, shape)
        else:
            value = self.r.standard_normal(shape) / np.sqrt(max(1, int(np.prod(shape[1:])) if len(shape) > 1 else 1))
        return self.const(value.astype(np.float32), base)

    def op(self, op_type: str, inputs, n_out: int = 1, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, group: int = 1, bias: bool = True, **attrs) -> str:
        w = self.weight((c_out, c_in // group, k, k), "conv_w")
        ins = [x, w] + ([self.weight((c_out,), "conv_b")] if bias else [])
        attrs.setdefault("pads", [k // 2] * 4)
        return self.op("Conv", ins, group=group, **attrs)

    def bn(self, x: str, c: int) -> str:
        return self.op("BatchNormalization", [x, self.weight((c,), "gamma", 0.5), self.weight((c,), "beta"),
                                              self.weight((c,), "mean"), self.weight((c,), "var", 0.5)])

    def build(self, inputs, outputs, name: str = "test", *, domains: tuple[str, ...] = (),
              value_info=()) -> onnx.ModelProto:
        return make_model(self.nodes, inputs, outputs, self.inits, opset=self.opset, name=name, domains=domains,
                          value_info=value_info)


def residual_add(seed: int = 0, c: int = 8, hw: int = 6) -> onnx.ModelProto:
    """stem conv → [conv-bn-relu-conv-bn] + skip → relu → conv head: one merged residual group."""
    g = GraphBuilder(seed)
    s = g.op("Relu", [g.bn(g.conv("x", 3, c), c)])
    b = g.op("Relu", [g.bn(g.conv(s, c, c), c)])
    b = g.bn(g.conv(b, c, c), c)
    a = g.op("Relu", [g.op("Add", [s, b])])
    g.nodes.append(helper.make_node("Conv", [a, g.weight((4, c, 1, 1))], ["out"], name="head"))
    return g.build([vinfo("x", [1, 3, hw, hw])], [vinfo("out", [1, 4, hw, hw])])


def concat_split(seed: int = 0, hw: int = 5) -> onnx.ModelProto:
    """Two convs concatenated, split at a different boundary, each part consumed by its own conv."""
    g = GraphBuilder(seed)
    a = g.op("Relu", [g.conv("x", 3, 6)])
    b = g.op("Relu", [g.conv("x", 3, 4)])
    cat = g.op("Concat", [a, b], axis=1)
    p, q = g.op("Split", [cat, g.const(np.array([4, 6], np.int64), "split")], n_out=2, axis=1)
    y1 = g.conv(p, 4, 3, k=1)
    y2 = g.conv(q, 6, 3, k=1)
    g.nodes.append(helper.make_node("Add", [y1, y2], ["out"], name="sum"))
    return g.build([vinfo("x", [1, 3, hw, hw])], [vinfo("out", [1, 3, hw, hw])])


def flatten_gemm(seed: int = 0, c: int = 4, hw: int = 3) -> onnx.ModelProto:
    """conv → relu → Flatten (C x H x W features) → Gemm(transB) → relu → Gemm → out."""
    g = GraphBuilder(seed)
    f = g.op("Flatten", [g.op("Relu", [g.conv("x", 2, c)])], axis=1)
    h = g.op("Relu", [g.op("Gemm", [f, g.weight((10, c * hw * hw)), g.weight((10,))], transB=1)])
    g.nodes.append(helper.make_node("Gemm", [h, g.weight((10, 3)), g.weight((3,))], ["out"], name="fc2"))
    return g.build([vinfo("x", [1, 2, hw, hw])], [vinfo("out", [1, 3])])


def depthwise(seed: int = 0, c: int = 6, mult: int = 1, hw: int = 5) -> onnx.ModelProto:
    """conv → depthwise conv (group=c, multiplier ``mult``) → bn → relu → pointwise conv → out."""
    g = GraphBuilder(seed)
    a = g.op("Relu", [g.conv("x", 3, c)])
    d = g.op("Relu", [g.bn(g.conv(a, c, c * mult, group=c), c * mult)])
    g.nodes.append(helper.make_node("Conv", [d, g.weight((4, c * mult, 1, 1))], ["out"], name="pw"))
    return g.build([vinfo("x", [1, 3, hw, hw])], [vinfo("out", [1, 4, hw, hw])])


def squeeze_excite(seed: int = 0, c: int = 8, hw: int = 5) -> onnx.ModelProto:
    """conv → x * sigmoid(conv(relu(conv(GlobalAveragePool(x))))) → conv: the SE block."""
    g = GraphBuilder(seed)
    x = g.op("Relu", [g.conv("x", 3, c)])
    s = g.op("GlobalAveragePool", [x])
    s = g.op("Sigmoid", [g.conv(g.op("Relu", [g.conv(s, c, 4, k=1)]), 4, c, k=1)])
    y = g.op("Mul", [x, s])
    g.nodes.append(helper.make_node("Conv", [y, g.weight((5, c, 1, 1))], ["out"], name="proj"))
    return g.build([vinfo("x", [1, 3, hw, hw])], [vinfo("out", [1, 5, hw, hw])])


def transformer_ffn(seed: int = 0, d: int = 8, hidden: int = 16, t: int = 4, erf_gelu: bool = True) -> onnx.ModelProto:
    """[B, T, D] → MatMul → Add bias → GELU (Erf pattern) → MatMul → Add bias → + residual → out."""
    g = GraphBuilder(seed)
    h = g.op("Add", [g.op("MatMul", ["x", g.weight((d, hidden))]), g.weight((hidden,))])
    if erf_gelu:
        e = g.op("Erf", [g.op("Div", [h, g.const(np.array(np.sqrt(2.0), np.float32))])])
        h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [e, g.const(np.array(1.0, np.float32))])]),
                         g.const(np.array(0.5, np.float32))])
    else:
        h = g.op("Relu", [h])
    y = g.op("Add", [g.op("MatMul", [h, g.weight((hidden, d))]), g.weight((d,))])
    g.nodes.append(helper.make_node("Add", ["x", y], ["out"], name="residual"))
    return g.build([vinfo("x", ["B", t, d])], [vinfo("out", ["B", t, d])])


def class_scores(classes: int = 6, batch: int | str = "N") -> onnx.ModelProto:
    """scores [batch, classes] → Identity → logits: a classifier whose predictions the test chooses exactly."""
    nodes = [helper.make_node("Identity", ["scores"], ["logits"], name="identity")]
    return make_model(nodes, [vinfo("scores", [batch, classes])], [vinfo("logits", [batch, classes])])


# -- reliability builders: weights computed at run time, custom-domain ops ------------------------------
def computed_weights(seed: int = 0, c_in: int = 3, c_mid: int = 8, c_out: int = 6, hw: int = 6,
                     recipe: str = "reshape") -> onnx.ModelProto:
    """conv1 (weight computed at run time) → Relu → conv2 (stored weight) → out.

    ``recipe`` says how conv1's weight is made: ``reshape`` (Constant flat → Reshape → Transpose, bias from
    ConstantOfShape), ``weightnorm`` (g * v / ReduceL2(v)), ``random`` (RandomNormal: never constant) or
    ``custom`` (a custom-domain op over a stored tensor: cannot be evaluated).
    """
    g = GraphBuilder(seed)
    shape = (c_mid, c_in, 3, 3)
    w_value = g.r.standard_normal(shape).astype(np.float32) / 3
    domains: tuple[str, ...] = ()
    if recipe == "reshape":
        flat = g.op("Constant", [], value=numpy_helper.from_array(
            w_value.transpose(1, 0, 2, 3).reshape(-1), "w1_flat"))
        w = g.op("Transpose", [g.op("Reshape", [flat, g.const(np.array([c_in, c_mid, 3, 3], np.int64))])],
                 perm=[1, 0, 2, 3])
        b = g.op("ConstantOfShape", [g.const(np.array([c_mid], np.int64))],
                 value=numpy_helper.from_array(np.array([0.25], np.float32)))
    elif recipe == "weightnorm":
        v = g.const(w_value, "v")
        norm = g.op("ReduceL2", [v], axes=[1, 2, 3], keepdims=1)
        w = g.op("Mul", [g.op("Div", [v, norm]), g.weight((c_mid, 1, 1, 1), "gain", 0.5)])
        b = g.weight((c_mid,), "b1")
    elif recipe == "random":
        w = g.op("RandomNormal", [], shape=list(shape), seed=1.0, dtype=TensorProto.FLOAT)
        b = g.weight((c_mid,), "b1")
    elif recipe == "custom":
        w = g.op("Scale", [g.const(w_value, "w_raw")], scale=2.0)
        g.nodes[-1].domain = "com.example"
        domains = ("com.example",)
        b = g.weight((c_mid,), "b1")
    else:
        raise ValueError(f"unknown recipe {recipe}")
    g.nodes.append(helper.make_node("Conv", ["x", w, b], ["c1"], name="conv1", pads=[1, 1, 1, 1]))
    g.nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="relu1"))
    g.nodes.append(helper.make_node("Conv", ["r1", g.weight((c_out, c_mid, 3, 3)), g.weight((c_out,))], ["out"],
                                    name="conv2", pads=[1, 1, 1, 1]))
    return g.build([vinfo("x", [1, c_in, hw, hw])], [vinfo("out", [1, c_out, hw, hw])], "computed",
                   domains=domains)


def custom_op_chain(seed: int = 0, c: int = 8, hw: int = 6, *, custom_first: bool = False) -> onnx.ModelProto:
    """conv1 → Relu → conv2 → com.microsoft Trilu (a contrib op onnxruntime runs, onnxprune has no rule for) →
    head conv → out.

    The custom op touches conv2's output channels, so that group must be blocked while conv1 → conv2
    still prunes. ``custom_first=True`` puts the Trilu after conv1 instead, so the prunable conv2 → head
    group lies *after* the custom op (onnx cannot infer shapes through it).
    """
    g = GraphBuilder(seed)
    a = g.conv("x", 3, c)
    if custom_first:
        a = g.op("Trilu", [a])
        g.nodes[-1].domain = "com.microsoft"
        b = g.op("Relu", [g.conv(a, c, c)])
    else:
        b = g.op("Trilu", [g.conv(g.op("Relu", [a]), c, c)])
        g.nodes[-1].domain = "com.microsoft"
    g.nodes.append(helper.make_node("Conv", [b, g.weight((4, c, 1, 1))], ["out"], name="head"))
    return g.build([vinfo("x", [1, 3, hw, hw])], [vinfo("out", [1, 4, hw, hw])], "custom",
                   domains=("com.microsoft",))


def wide_mlp(seed: int = 0, d: int = 256, layers: int = 4, d_out: int = 16, batch: int = 2) -> onnx.ModelProto:
    """x[batch, d] → (MatMul d×d → Add → Relu) × layers → MatMul d×d_out → out: big models on demand.

    About ``4·d²·layers`` bytes of weights (d=2048, layers=6: 100 MB). Weights are scaled so activations
    stay O(1) however deep it is.
    """
    r = rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = r.standard_normal((d, d), dtype=np.float32)
        w *= np.float32(np.sqrt(2.0 / d))
        inits += [init(f"fc{i}_w", w), init(f"fc{i}_b", np.zeros(d, np.float32))]
        del w
        nodes += [helper.make_node("MatMul", [prev, f"fc{i}_w"], [f"mm{i}"], name=f"fc{i}"),
                  helper.make_node("Add", [f"mm{i}", f"fc{i}_b"], [f"h{i}"], name=f"fc{i}_bias"),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}")]
        prev = f"r{i}"
    inits.append(init("head_w", (r.standard_normal((d, d_out)) / np.sqrt(d)).astype(np.float32)))
    nodes.append(helper.make_node("MatMul", [prev, "head_w"], ["out"], name="head"))
    return make_model(nodes, [vinfo("x", [batch, d])], [vinfo("out", [batch, d_out])], inits, name="wide_mlp",
                      check=False)


def mlp3(seed: int = 0, d_in: int = 8, h1: int = 12, h2: int = 10, d_out: int = 4, quiet_scale: float = 1e-3
         ) -> onnx.ModelProto:
    """x → Gemm fc1 (h1) → Relu → Gemm fc2 (h2) → Relu → Gemm fc3 → out, two prunable groups.

    fc3's weights are scaled by ``quiet_scale``, so the fc2 group barely reaches the output: a model with
    one sensitive group (fc1) and one insensitive group (fc2) for sensitivity and budget tests.
    """
    r = rng(seed)
    inits = [
        init("fc1_w", r.standard_normal((h1, d_in)).astype(np.float32)),
        init("fc1_b", r.standard_normal(h1).astype(np.float32)),
        init("fc2_w", r.standard_normal((h2, h1)).astype(np.float32)),
        init("fc2_b", r.standard_normal(h2).astype(np.float32)),
        init("fc3_w", (quiet_scale * r.standard_normal((d_out, h2))).astype(np.float32)),
        init("fc3_b", r.standard_normal(d_out).astype(np.float32)),
        init("skip_w", r.standard_normal((d_out, h1)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "fc1_w", "fc1_b"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("Gemm", ["r1", "fc2_w", "fc2_b"], ["h2"], name="fc2", transB=1),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "fc3_w", "fc3_b"], ["y3"], name="fc3", transB=1),
        helper.make_node("Gemm", ["r1", "skip_w"], ["ys"], name="skip", transB=1),
        helper.make_node("Add", ["y3", "ys"], ["out"], name="merge"),
    ]
    return make_model(nodes, [vinfo("x", ["N", d_in])], [vinfo("out", ["N", d_out])], inits)


def custom_op_flatten(seed: int = 0, c: int = 4, hw: int = 3, *, declare: bool = False) -> onnx.ModelProto:
    """conv1 → com.microsoft Trilu → conv2 → Relu → Flatten → Gemm → out[1, 5].

    Flatten needs the whole shape of conv2's output, which onnx cannot infer past the custom op unless
    ``declare=True`` puts the Trilu output's shape in ``value_info`` (as exporters often do).
    """
    g = GraphBuilder(seed)
    a = g.op("Trilu", [g.conv("x", 3, c)])
    g.nodes[-1].domain = "com.microsoft"
    f = g.op("Flatten", [g.op("Relu", [g.conv(a, c, c)])], axis=1)
    g.nodes.append(helper.make_node("Gemm", [f, g.weight((c * hw * hw, 5))], ["out"], name="head"))
    return g.build([vinfo("x", [1, 3, hw, hw])], [vinfo("out", [1, 5])], "custom_flatten",
                   domains=("com.microsoft",), value_info=[vinfo(a, [1, c, hw, hw])] if declare else ())


# -- real-export shapes: dynamic dims as exporters write them, fp16 conversions -----------------------
def _dim(d: onnx.TensorShapeProto.Dimension, value: int | str | None) -> None:
    """Set one declared dim: an int (``-1`` as Paddle stores "unknown"), a dim_param name, or unnamed (None)."""
    d.Clear()
    if isinstance(value, int):
        d.dim_value = value
    elif isinstance(value, str):
        d.dim_param = value


def declare_shape(vi: onnx.ValueInfoProto, shape) -> onnx.ValueInfoProto:
    """Rewrite a value_info's declared dims in place (``-1`` and unnamed dims, which ``make_tensor_value_info``
    cannot write); returns it."""
    dims = vi.type.tensor_type.shape.dim
    del dims[:]
    for value in shape:
        _dim(dims.add(), value)
    return vi


def text_classifier(seed: int = 0, vocab: int = 16, d: int = 8, hidden: int = 16, classes: int = 4,
                    max_len: int = 64) -> onnx.ModelProto:
    """A BERT-like text model: input_ids, attention_mask int64 [batch, sequence] → embedding Gather + a
    position table sliced to the sequence length (``Shape -> Gather -> Slice``, so lengths above ``max_len``
    fail in onnxruntime) → masked → FFN (MatMul → Relu → MatMul, the prunable group) → + residual →
    MatMul head → logits [batch, sequence, classes]."""
    g = GraphBuilder(seed)
    emb = g.weight((vocab, d), "emb")
    pos = g.weight((max_len, d), "pos")
    e = g.op("Gather", [emb, "input_ids"], axis=0)
    seq = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(np.array([1], np.int64), "seq_axis")], axis=0)
    p = g.op("Slice", [pos, g.const(np.array([0], np.int64), "start"), seq, g.const(np.array([0], np.int64), "ax")])
    m = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT),
                           g.const(np.array([-1], np.int64), "last")])
    x = g.op("Mul", [g.op("Add", [e, p]), m])
    h = g.op("Relu", [g.op("Add", [g.op("MatMul", [x, g.weight((d, hidden), "ffn1")]), g.weight((hidden,), "b1")])])
    y = g.op("Add", [g.op("MatMul", [h, g.weight((hidden, d), "ffn2")]), g.weight((d,), "b2")])
    r = g.op("Add", [x, y])
    g.nodes.append(helper.make_node("MatMul", [r, g.weight((d, classes), "head")], ["logits"], name="head"))
    ids = [vinfo("input_ids", ["batch", "sequence"], TensorProto.INT64),
           vinfo("attention_mask", ["batch", "sequence"], TensorProto.INT64)]
    return g.build(ids, [vinfo("logits", ["batch", "sequence", classes])], "text_classifier")


def paddle_classifier(seed: int = 0, c: int = 8, classes: int = 5) -> onnx.ModelProto:
    """A Paddle-style export: x [-1, 3, '?', unnamed] (stored -1, a ``?`` name and an unnamed dim) → conv
    stride 2 → BN → Relu → conv → Relu → GlobalAveragePool → Flatten → Gemm → out ['p2o.DynamicDimension.1',
    classes]; the declared output keeps its odd dims too."""
    g = GraphBuilder(seed)
    a = g.op("Relu", [g.bn(g.conv("x", 3, c, strides=[2, 2]), c)])
    b = g.op("Relu", [g.conv(a, c, c)])
    f = g.op("Flatten", [g.op("GlobalAveragePool", [b])], axis=1)
    g.nodes.append(helper.make_node("Gemm", [f, g.weight((classes, c)), g.weight((classes,))], ["out"],
                                    name="fc", transB=1))
    x = declare_shape(vinfo("x", [1, 3, 1, 1]), [-1, 3, "?", None])
    out = declare_shape(vinfo("out", [1, classes]), ["p2o.DynamicDimension.1", classes])
    return g.build([x], [out], "paddle_classifier")


def symbolic_inputs(model: onnx.ModelProto, names=("N", "C", "H", "W")) -> onnx.ModelProto:
    """A copy of ``model`` whose first input declares every dim symbolic (``names``), as some exporters
    write [N, C, H, W]; the output's batch dim becomes ``names[0]``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    declare_shape(out.graph.input[0], list(names[: len(out.graph.input[0].type.tensor_type.shape.dim)]))
    for o in out.graph.output:
        if len(o.type.tensor_type.shape.dim):
            _dim(o.type.tensor_type.shape.dim[0], names[0])
    del out.graph.value_info[:]
    return out


def fp16_classifier(seed: int = 0, c: int = 8, classes: int = 10, hw: int = 6) -> onnx.ModelProto:
    """An fp16 conversion of a small CNN classifier (weights, I/O and compute in float16): x fp16
    ['batch', 3, hw, hw] → conv → BN → Relu → conv → Relu → GlobalAveragePool → Flatten → Gemm → logits fp16
    ['batch', classes], with the intermediate shapes declared in value_info as converters leave them."""
    f32 = residual_free_cnn(seed, c=c, classes=classes, hw=hw)
    out = onnx.ModelProto()
    out.CopyFrom(f32)
    for t in out.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in list(out.graph.input) + list(out.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    inferred = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    out.graph.value_info.extend(v for v in inferred.graph.value_info)
    onnx.checker.check_model(out, full_check=True)
    return out


def residual_free_cnn(seed: int = 0, c: int = 8, classes: int = 10, hw: int = 6) -> onnx.ModelProto:
    """x ['batch', 3, hw, hw] → conv → BN → Relu → conv → Relu → GlobalAveragePool → Flatten → Gemm → logits."""
    g = GraphBuilder(seed)
    a = g.op("Relu", [g.bn(g.conv("x", 3, c), c)])
    b = g.op("Relu", [g.conv(a, c, c)])
    f = g.op("Flatten", [g.op("GlobalAveragePool", [b])], axis=1)
    g.nodes.append(helper.make_node("Gemm", [f, g.weight((classes, c)), g.weight((classes,))], ["logits"],
                                    name="fc", transB=1))
    return g.build([vinfo("x", ["batch", 3, hw, hw])], [vinfo("logits", ["batch", classes])], "cnn")


def audio_encoder(seed: int = 0, c: int = 8, kernel: int = 100, classes: int = 4) -> onnx.ModelProto:
    """A wav2vec2-like audio model: input_values float [batch, sequence] → Unsqueeze → Conv1d (kernel
    ``kernel``, so shorter inputs cannot run) → Relu → Conv1d → Relu → ReduceMean over time → Gemm → logits."""
    g = GraphBuilder(seed)
    x = g.op("Unsqueeze", ["input_values", g.const(np.array([1], np.int64), "chan")])
    a = g.op("Relu", [g.op("Conv", [x, g.weight((c, 1, kernel)), g.weight((c,))], strides=[5])])
    b = g.op("Relu", [g.op("Conv", [a, g.weight((c, c, 3)), g.weight((c,))])])
    m = g.op("ReduceMean", [b], axes=[2], keepdims=0)
    g.nodes.append(helper.make_node("Gemm", [m, g.weight((classes, c)), g.weight((classes,))], ["logits"],
                                    name="fc", transB=1))
    return g.build([vinfo("input_values", ["batch", "sequence"])], [vinfo("logits", ["batch", classes])], "audio")


def attention_block(seed: int = 0, d: int = 8, heads: int = 2, t: int = 4, *, bias: bool = True,
                    runtime_target: bool = False, mask: bool = True, shape_op: str = "",
                    gemm_out: bool = False, kv_heads: int | None = None, repeat: str = "expand",
                    fused: str = "") -> onnx.ModelProto:
    """Multi-head self-attention over ``x [B, T, d]`` with a residual, as torch/HF export it.

    Q, K, V = MatMul (+ Add bias) → Reshape [B, T, heads, d/heads] → Transpose → Q·Kᵀ → Mul scale → Add mask
    → Softmax → ·V → Transpose → Reshape [B, T, d] → output MatMul (+ bias) → + x. ``runtime_target`` builds
    the reshape targets as torch does: ``Concat(Unsqueeze(Gather(Shape(x), i)), ..., [heads], [head_dim])``
    and ``Concat(Slice(Shape(ctx), 0, 2), [d])``. ``shape_op`` computes the ``heads`` and ``head_dim`` pieces of
    every split target with that op (``Max`` of two constants) instead of storing them: unknown shape arithmetic.
    ``kv_heads`` < ``heads`` gives grouped-query attention: K and V have ``kv_heads`` heads, each repeated for
    ``heads / kv_heads`` query heads as Hugging Face's ``repeat_kv`` exports it (``Unsqueeze -> Expand ->
    Reshape``, or ``Tile`` with ``repeat="tile"``; ``repeat="expand-runtime"`` builds the Expand target as a
    ``Concat`` of the runtime batch and constants). ``fused="split"`` or ``"slice"`` computes Q, K, V with one
    packed ``[d, 3d]`` weight (GPT-2's ``c_attn``) cut apart by ``Split`` or three ``Slice`` nodes.
    """
    g = GraphBuilder(seed)
    hd = d // heads
    kv = kv_heads or heads
    n_rep = heads // kv

    def proj(x: str, width: int = d) -> str:
        y = g.op("MatMul", [x, g.weight((d, width))])
        return g.op("Add", [y, g.weight((width,), "b")]) if bias else y

    def dim(x: str, i: int) -> str:
        gathered = g.op("Gather", [g.op("Shape", [x]), g.const(np.array(i, np.int64))], axis=0)
        return g.op("Unsqueeze", [gathered, g.const(np.array([0], np.int64))])

    def split(y: str, perm: list[int], n: int = heads) -> str:
        if runtime_target:
            count = g.op(shape_op, [g.const(np.array([n], np.int64)), g.const(np.array([1], np.int64))]) \
                if shape_op else g.op("Unsqueeze", [g.const(np.array(n, np.int64)), g.const(np.array([0], np.int64))])
            size = g.op(shape_op, [g.const(np.array([hd], np.int64)), g.const(np.array([1], np.int64))]) \
                if shape_op else g.const(np.array([hd], np.int64))
            target = g.op("Concat", [dim(y, 0), dim(y, 1), count, size], axis=0)
        else:
            target = g.const(np.array([0, t, n, hd], np.int64))
        return g.op("Transpose", [g.op("Reshape", [y, target])], perm=perm)

    def repeat_kv(y: str, tail: list[int]) -> str:
        if n_rep == 1:
            return y
        u = g.op("Unsqueeze", [y, g.const(np.array([2], np.int64))])
        if repeat == "tile":
            r = g.op("Tile", [u, g.const(np.array([1, 1, n_rep, 1, 1], np.int64))])
        elif repeat == "expand-runtime":
            shape = g.op("Concat", [dim(y, 0), g.const(np.array([kv, n_rep, *tail], np.int64))], axis=0)
            r = g.op("Expand", [u, shape])
        else:
            r = g.op("Expand", [u, g.const(np.array([1, kv, n_rep, *tail], np.int64))])
        return g.op("Reshape", [r, g.const(np.array([-1, heads, *tail], np.int64))])

    if fused:
        packed = proj("x", 3 * d)
        if fused == "split":
            parts = g.op("Split", [packed, g.const(np.array([d, d, d], np.int64))], n_out=3, axis=2)
        else:
            parts = [g.op("Slice", [packed, g.const(np.array([k * d], np.int64)),
                                    g.const(np.array([(k + 1) * d], np.int64)), g.const(np.array([2], np.int64))])
                     for k in range(3)]
        q, k, v = (split(parts[0], [0, 2, 1, 3]), split(parts[1], [0, 2, 3, 1]), split(parts[2], [0, 2, 1, 3]))
    else:
        q = split(proj("x"), [0, 2, 1, 3])
        k = repeat_kv(split(proj("x", kv * hd), [0, 2, 3, 1], kv), [hd, t])
        v = repeat_kv(split(proj("x", kv * hd), [0, 2, 1, 3], kv), [t, hd])
    s = g.op("Mul", [g.op("MatMul", [q, k]), g.const(np.array(1.0 / np.sqrt(hd), np.float32))])
    if mask:
        s = g.op("Add", [s, g.const(np.triu(np.full((t, t), -1e4, np.float32), 1))])
    c = g.op("Transpose", [g.op("MatMul", [g.op("Softmax", [s], axis=-1), v])], perm=[0, 2, 1, 3])
    if runtime_target:
        lead = g.op("Slice", [g.op("Shape", [c]), g.const(np.array([0], np.int64)), g.const(np.array([2], np.int64))])
        target = g.op("Concat", [lead, g.const(np.array([d], np.int64))], axis=0)
    else:
        target = g.const(np.array([-1, t, d], np.int64))
    merged = g.op("Reshape", [c, target])
    if gemm_out:
        flat = g.op("Reshape", [merged, g.const(np.array([-1, d], np.int64))])
        out = g.op("Gemm", [flat, g.weight((d, d)), g.weight((d,), "b")], transB=1)
        out = g.op("Reshape", [out, g.const(np.array([-1, t, d], np.int64))])
    else:
        out = proj(merged)
    g.nodes.append(helper.make_node("Add", ["x", out], ["out"], name="residual"))
    return g.build([vinfo("x", ["B", t, d])], [vinfo("out", ["B", t, d])])


def norm_block(seed: int = 0, d: int = 8, hidden: int = 16, t: int = 4, classes: int = 5, *,
               pre_norm: bool = True, ln_output: bool = False) -> onnx.ModelProto:
    """A one-block transformer with random LayerNorm scales/shifts: pre-norm ``x + FFN(LN(x))`` then a
    final LN, token mean and a Gemm head; ``pre_norm=False`` is post-norm ``LN(x + FFN(x))``;
    ``ln_output`` also exposes the first LN's output as a graph output."""
    g = GraphBuilder(seed)
    ln1 = g.op("LayerNormalization", ["x", g.weight((d,), "gamma", low=0.5), g.weight((d,), "beta")], axis=-1)
    src = ln1 if pre_norm else "x"
    h = g.op("Relu", [g.op("Add", [g.op("MatMul", [src, g.weight((d, hidden))]), g.weight((hidden,))])])
    y = g.op("Add", [g.op("MatMul", [h, g.weight((hidden, d))]), g.weight((d,))])
    res = g.op("Add", [ln1 if not pre_norm else "x", y])
    ln2 = g.op("LayerNormalization", [res, g.weight((d,), "gamma", low=0.5), g.weight((d,), "beta")], axis=-1)
    pooled = g.op("ReduceMean", [ln2], axes=[1], keepdims=0)
    g.nodes.append(helper.make_node("Gemm", [pooled, g.weight((classes, d)), g.weight((classes,))], ["logits"],
                                    name="head", transB=1))
    outputs = [vinfo("logits", ["B", classes])]
    if ln_output:
        outputs.append(vinfo(ln1, ["B", t, d]))
    return g.build([vinfo("x", ["B", t, d])], outputs)


def _rms_norm(g: GraphBuilder, x: str, d: int, cast: int | None = None) -> str:
    """Llama's RMSNorm as torch exports it: ``x * (1 / sqrt(mean(x^2, -1) + eps)) * gamma``; ``cast``: the
    element type the statistic is computed in, between two Casts (Llama's ``Cast(to=float)`` on each side)."""
    dt = np.dtype(helper.tensor_dtype_to_np_dtype(cast) if cast else np.float32)
    if cast:
        x = g.op("Cast", [x], to=cast)
    mean = g.op("ReduceMean", [g.op("Pow", [x, g.const(dt.type(2.0))])], axes=[-1], keepdims=1)
    scale = g.op("Div", [g.const(dt.type(1.0)), g.op("Sqrt", [g.op("Add", [mean, g.const(dt.type(1e-6))])])])
    y = g.op("Mul", [x, scale])
    if cast:
        y = g.op("Cast", [y], to=TensorProto.FLOAT)
    return g.op("Mul", [g.weight((d,), "gamma", low=0.5), y])


def prenorm_stack(seed: int = 0, d_in: int = 4, d: int = 16, hidden: int = 24, t: int = 5, blocks: int = 2,
                  classes: int = 5, *, norm: str = "layer", gated: bool = False, cast: int | None = None,
                  flatten: bool = False) -> onnx.ModelProto:
    """A pre-norm transformer-like stack: token embedding (MatMul + bias + positions) into a width-``d`` stream,
    ``blocks`` × ``x + FFN(LN(x))``, a final LN, token mean and a Gemm head; LayerNorm scales/shifts random.

    ``norm="rms"`` writes every norm as Llama's exported RMSNorm (``cast``: with Casts to that type around its
    statistic); ``gated`` makes the FFN ``relu(n W1) * (n W3)`` (two readers of one norm output, as gate/up or
    q/k/v projections are); ``flatten`` writes the FFN's layers as GPT-2's Conv1D does: ``[B, T, C]``
    reshaped to ``[-1, C]``, a Gemm, reshaped back to ``[-1, T, C']``."""
    g = GraphBuilder(seed)
    x = g.op("Add", [g.op("Add", [g.op("MatMul", ["x", g.weight((d_in, d))]), g.weight((d,))]),
                     g.weight((1, t, d))])

    def normed(x: str) -> str:
        if norm == "rms":
            return _rms_norm(g, x, d, cast)
        return g.op("LayerNormalization", [x, g.weight((d,), "gamma", low=0.5), g.weight((d,), "beta")], axis=-1)

    def linear(x: str, c_in: int, c_out: int) -> str:
        if not flatten:
            return g.op("Add", [g.op("MatMul", [x, g.weight((c_in, c_out))]), g.weight((c_out,))])
        rows = g.op("Reshape", [x, g.const(np.array([-1, c_in], dtype=np.int64))])
        y = g.op("Gemm", [rows, g.weight((c_in, c_out)), g.weight((c_out,))])
        return g.op("Reshape", [y, g.const(np.array([-1, t, c_out], dtype=np.int64))])

    for _ in range(blocks):
        ln = normed(x)
        h = g.op("Relu", [linear(ln, d, hidden)])
        if gated:
            h = g.op("Mul", [h, g.op("MatMul", [ln, g.weight((d, hidden))])])
        x = g.op("Add", [x, linear(h, hidden, d)])
    ln = normed(x)
    pooled = g.op("ReduceMean", [ln], axes=[1], keepdims=0)
    g.nodes.append(helper.make_node("Gemm", [pooled, g.weight((classes, d)), g.weight((classes,))], ["logits"],
                                    name="head", transB=1))
    return g.build([vinfo("x", ["B", t, d_in])], [vinfo("logits", ["B", classes])])
