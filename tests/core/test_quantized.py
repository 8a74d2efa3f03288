"""Quantized weights in core: discovery through DequantizeLinear, parameter counts, and constant folding
that never changes a model's precision."""

from __future__ import annotations

from pathlib import Path

import builders
import numpy as np
import onnx
from onnx import TensorProto, helper
from qdq_models import quantize_qdq

from onnxprune.core.fold import fold_constants
from onnxprune.core.ir import GraphIndex
from onnxprune.core.quant import dequantized, quantized_data
from onnxprune.core.stats import count_params
from onnxprune.runtime.session import run_constant_graph


def test_constant_folding_leaves_a_qdq_model_quantized(tmp_path: Path) -> None:
    model = onnx.load(quantize_qdq(builders.conv_bn_relu(), tmp_path))
    result = fold_constants(model, run_constant_graph)
    assert result.folded == () and result.model is model  # no DequantizeLinear became a float initializer
    assert result.unfolded == ()  # and its weights are not reported as computed: they are pruned in place


def test_a_cast_of_int8_weights_is_not_folded_to_float() -> None:
    """int8 → Cast(float) → Mul(scale) → Conv: dequantization by hand; storing it would widen the model 4x."""
    g = builders.GraphBuilder(0)
    q = g.const(g.r.integers(-100, 100, (6, 3, 3, 3)).astype(np.int8), "w_q")
    w = g.op("Mul", [g.op("Cast", [q], to=TensorProto.FLOAT), g.const(np.float32(0.01), "scale")])
    g.nodes.append(helper.make_node("Conv", ["x", w], ["out"], name="conv", pads=[1, 1, 1, 1]))
    model = g.build([builders.vinfo("x", [1, 3, 5, 5])], [builders.vinfo("out", [1, 6, 5, 5])])
    result = fold_constants(model, run_constant_graph)
    assert result.folded == ()
    assert [u.node for u in result.unfolded] == ["'conv' (Conv)"]
    assert "changing the model's precision" in result.unfolded[0].reason


def test_qdq_parameters_are_counted_and_described(tmp_path: Path) -> None:
    model = onnx.load(quantize_qdq(builders.conv_relu_conv(batch=1), tmp_path, unsigned=True))
    index = GraphIndex(model)
    quant = quantized_data(index)
    assert {"w1_quantized", "w2_quantized", "b1_quantized", "b2_quantized"} <= set(quant)
    w1 = quant["w1_quantized"]
    assert (w1.axis, w1.data_type, w1.reason) == (0, TensorProto.UINT8, "")
    # int8/uint8 weights and int32 biases are parameters (6*4*9 + 6 + 5*6 + 5), plus the float scales
    floats = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT)
    assert count_params(model) == 6 * 4 * 9 + 6 + 5 * 6 + 5 + floats


def test_block_quantization_and_runtime_scales_are_named() -> None:
    g = builders.GraphBuilder(0, opset=21)
    q = g.const(np.zeros((4, 6), np.int8), "q")
    blocked = g.op("DequantizeLinear", [q, g.const(np.ones((4, 3), np.float32), "s")], axis=1, block_size=2)
    scale = g.op("Abs", [g.const(np.ones((4,), np.float32), "s_raw")])
    runtime = g.op("DequantizeLinear", [q, scale], axis=0)
    g.op("Add", [g.op("MatMul", ["x", g.op("Transpose", [blocked])]),
                       g.op("MatMul", ["x", g.op("Transpose", [runtime])])])
    g.nodes[-1].output[0] = "out"
    model = g.build([builders.vinfo("x", [2, 6])], [builders.vinfo("out", [2, 4])])
    index = GraphIndex(model)
    assert "block quantization" in dequantized(index, blocked).reason  # type: ignore[union-attr]
    assert "computed at run time" in dequantized(index, runtime).reason  # type: ignore[union-attr]
    assert dequantized(index, "x") is None
