"""Tests for onnxprune.core.weights: which tensors are prunable weights, and reading/writing them."""

from __future__ import annotations

import builders
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from onnxprune.core.errors import ConfigError
from onnxprune.core.weights import (
    copy_model_without_weights,
    find_prunable_weights,
    get_weight,
    scan_weights,
    set_weight,
)


def by_name(model):
    return {w.name: w for w in find_prunable_weights(model)}


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_conv_bn_relu_lists_only_conv_weights():
    weights = find_prunable_weights(builders.conv_bn_relu())
    assert [w.name for w in weights] == ["w1", "w2"]
    w1 = weights[0]
    assert (w1.kind, w1.readers, w1.op_types) == ("initializer", ("conv1",), ("Conv",))
    assert w1.shape == (8, 3, 3, 3) and w1.data_type == TensorProto.FLOAT
    assert w1.reduction_axes == (1, 2, 3) and w1.reduction_size == 27 and w1.numel == 216


def test_reduction_axes_follow_gemm_trans_b_and_matmul():
    weights = by_name(builders.gemm_stack())
    assert weights["g0_w"].reduction_axes == (0,)  # transB=0: W is [K, N]
    assert weights["g0_w"].reduction_size == 16
    assert weights["g1_w"].reduction_axes == (1,)  # transB=1: W is [N, K]
    assert weights["g1_w"].reduction_size == 24
    assert weights["bm_w"].reduction_axes == (1,)  # batched MatMul: W is [B, K, N]
    mlp = by_name(builders.mlp())
    assert mlp["fc1_w"].reduction_axes == (1,) and mlp["fc2_w"].reduction_axes == (0,)
    assert set(mlp) == {"fc1_w", "fc2_w"}  # biases never


def test_conv_transpose_reduces_over_input_channels_unless_grouped():
    (plain,) = find_prunable_weights(builders.conv_transpose())
    assert plain.reduction_axes == (0,) and plain.op_types == ("ConvTranspose",)
    (grouped,) = find_prunable_weights(builders.conv_transpose(group=2))
    assert grouped.reduction_axes == () and "grouped ConvTranspose" in grouped.reduction_note


def test_shared_weight_listed_once_with_all_readers_through_identity():
    weights = find_prunable_weights(builders.shared_weight_convs())
    assert len(weights) == 1
    assert weights[0].name == "w" and weights[0].readers == ("conv_a", "conv_b")


def test_constant_node_weight_through_identity():
    (w,) = find_prunable_weights(builders.constant_weight_mlp())
    assert (w.name, w.kind, w.readers, w.shape) == ("cw", "constant", ("fc",), (8, 12))


def test_misused_weights_are_refused_with_reasons():
    scan = scan_weights(builders.weight_misused())
    assert [w.name for w in scan.weights] == ["wk"]
    reasons = {s.name: s.reason for s in scan.skipped}
    assert "'add_a' (Add) as input 1" in reasons["wa"]
    assert "graph output" in reasons["wo"]
    assert "INT32" in reasons["wi"]


def test_input_model_is_not_modified_by_discovery():
    model = builders.shared_weight_convs()
    before = model.SerializeToString()
    find_prunable_weights(model)
    assert model.SerializeToString() == before


def test_get_and_set_weight_on_initializer_changes_outputs_as_expected():
    model = builders.mlp()
    pw = by_name(model)["fc1_w"]
    value = get_weight(model, pw)
    assert value.flags.writeable and value.shape == pw.shape
    x = builders.rng(1).standard_normal((3, 16)).astype(np.float32)
    value[:, 0] = 0
    set_weight(model, pw, value)
    (got,) = run(model, {"x": x})
    x0 = x.copy()
    x0[:, 0] = 0  # zeroing input column 0 of fc1 == zeroing the input feature
    (want,) = run(builders.mlp(), {"x": x0})
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.array_equal(get_weight(model, pw), value)


def test_set_weight_on_constant_node_keeps_other_fields():
    model = builders.constant_weight_mlp()
    (pw,) = find_prunable_weights(model)
    value = get_weight(model, pw)
    value[value < 0] = 0
    set_weight(model, pw, value)
    const = next(n for n in model.graph.node if n.name == "const_w")
    assert np.array_equal(numpy_helper.to_array(const.attribute[0].t), value)
    x = np.ones((2, 8), np.float32)
    (got,) = run(model, {"x": x})
    bias = numpy_helper.to_array(next(n for n in model.graph.node if n.name == "const_b").attribute[0].t)
    np.testing.assert_allclose(got, x @ value + bias, rtol=1e-5)


def test_set_weight_rejects_wrong_shape_and_dtype():
    model = builders.mlp()
    pw = by_name(model)["fc1_w"]
    with pytest.raises(ConfigError, match=r"weight 'fc1_w' has shape \(2, 2\), expected \(32, 16\)"):
        set_weight(model, pw, np.zeros((2, 2), np.float32))
    with pytest.raises(ConfigError, match="has dtype float64, expected FLOAT"):
        set_weight(model, pw, np.zeros(pw.shape, np.float64))


def test_get_weight_from_another_model_raises():
    pw = by_name(builders.mlp())["fc1_w"]
    with pytest.raises(ConfigError, match="weight 'fc1_w' .* is not in this model"):
        get_weight(builders.conv_bn_relu(), pw)


def test_copy_model_without_weights_then_fill_equals_a_full_copy():
    model = builders.conv_bn_relu()
    pws = find_prunable_weights(model)
    copy = copy_model_without_weights(model, [pw.name for pw in pws])
    empty = {t.name: t for t in copy.graph.initializer}
    assert not empty["w1"].raw_data and list(empty["w1"].dims) == [8, 3, 3, 3]
    assert empty["b1"].SerializeToString() == next(t for t in model.graph.initializer
                                                   if t.name == "b1").SerializeToString()
    for pw in pws:
        set_weight(copy, pw, get_weight(model, pw, copy=False))
    assert copy.SerializeToString() == model.SerializeToString()
