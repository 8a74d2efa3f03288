"""Random graphs built from supported blocks, drawn by hypothesis: shared by the structured property test and
the whole-pipeline fuzz test (one definition, so both explore the same space)."""

from __future__ import annotations

import builders
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from onnx import helper

HW = 4
BLOCKS = ["conv", "residual", "concat", "split", "se", "dw", "pool", "slice"]
HEADS = ["conv", "gemm", "flatten", "ffn"]

settings.register_profile("onnxprune", max_examples=25, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])


def _block(g: builders.GraphBuilder, kind: str, x: str, c: int, d: st.DataObject) -> tuple[str, int]:
    width = lambda: d.draw(st.integers(2, 7))  # noqa: E731
    if kind == "conv":
        c2 = width()
        return g.op("Relu", [g.bn(g.conv(x, c, c2), c2)]), c2
    if kind == "residual":
        return g.op("Relu", [g.op("Add", [x, g.bn(g.conv(g.op("Relu", [g.conv(x, c, c)]), c, c), c)])]), c
    if kind == "concat":
        a, b = width(), width()
        return g.op("Concat", [g.op("Relu", [g.conv(x, c, a)]), g.op("Tanh", [g.conv(x, c, b, k=1)])], axis=1), a + b
    if kind == "split" and c >= 2:
        k = d.draw(st.integers(1, c - 1))
        p, q = g.op("Split", [x, g.const(np.array([k, c - k], np.int64))], n_out=2, axis=1)
        return g.op("Concat", [g.op("Relu", [q]), g.op("Sigmoid", [p])], axis=1), c
    if kind == "se":
        r = width()
        s = g.op("GlobalAveragePool", [x])
        s = g.op("Sigmoid", [g.conv(g.op("Relu", [g.conv(s, c, r, k=1)]), r, c, k=1)])
        return g.op("Mul", [x, s]), c
    if kind == "dw":
        m = d.draw(st.integers(1, 2))
        return g.op("Relu", [g.conv(x, c, c * m, group=c)]), c * m
    if kind == "pool":
        return g.op("MaxPool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), c
    if kind == "slice" and c >= 3:
        s = g.op("Slice", [x, g.const(np.array([1], np.int64)), g.const(np.array([c], np.int64)),
                           g.const(np.array([1], np.int64))])
        return s, c - 1
    return g.op("Relu", [x]), c


def _head(g: builders.GraphBuilder, kind: str, x: str, c: int, d: st.DataObject) -> list:
    if kind == "conv":
        g.nodes.append(helper.make_node("Conv", [x, g.weight((3, c, 1, 1))], ["out"], name="head"))
        return [builders.vinfo("out", [1, 3, HW, HW])]
    if kind == "gemm":
        f = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
        g.nodes.append(helper.make_node("Gemm", [f, g.weight((3, c)), g.weight((3,))], ["out"], name="head", transB=1))
        return [builders.vinfo("out", [1, 3])]
    if kind == "flatten":
        f = g.op("Flatten", [x], axis=1)
        g.nodes.append(helper.make_node("Gemm", [f, g.weight((c * HW * HW, 3))], ["out"], name="head"))
        return [builders.vinfo("out", [1, 3])]
    h = d.draw(st.integers(2, 9))
    t = g.op("Transpose", [g.op("Reshape", [x, g.const(np.array([1, c, HW * HW], np.int64))])], perm=[0, 2, 1])
    u = g.op("Relu", [g.op("Add", [g.op("MatMul", [t, g.weight((c, h))]), g.weight((h,))])])
    g.nodes.append(helper.make_node("MatMul", [u, g.weight((h, 3))], ["out"], name="head"))
    return [builders.vinfo("out", [1, HW * HW, 3])]


@st.composite
def random_model(draw: st.DrawFn) -> tuple:
    d = draw(st.data())
    g = builders.GraphBuilder(draw(st.integers(0, 1000)))
    c = draw(st.integers(2, 6))
    x = g.op("Relu", [g.conv("x", 3, c)])
    kinds = draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=4))
    for kind in kinds:
        x, c = _block(g, kind, x, c, d)
    head = draw(st.sampled_from(HEADS))
    outputs = _head(g, head, x, c, d)
    return g.build([builders.vinfo("x", [1, 3, HW, HW])], outputs), kinds, head
