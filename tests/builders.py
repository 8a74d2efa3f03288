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
