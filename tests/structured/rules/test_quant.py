"""QuantizeLinear / DequantizeLinear rules: structured pruning of QDQ models keeps them quantized.

A quantized weight (int8 constant → "DequantizeLinear" → Conv/Gemm/MatMul) is cut in its integer storage,
with its per-channel scale and zero point when the cut axis is the quantized axis; activations' Q/DQ pairs
pass channels through (per-tensor scales untouched, per-channel ones sliced). Unsupported patterns block.

The oracle for a QDQ model is the *QDQ* original with the dropped channels' consumer weights set to their
zero point (which dequantizes to exactly 0): both models are quantized, so they compute the same real
function, and onnxruntime runs both with the same integer kernels. The only freedom left is how a float
accumulation is rounded by the next QuantizeLinear, which can move an output by one step of its scale; the
tolerance is therefore one quantization step of the output (``out_scale``). Measured: 0 on every model here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from oracle_check import check_prune, first_group, run_ort, sandwich, seeded_feeds
from qdq_models import quantize_qdq

from onnxprune.cli.main import main
from onnxprune.core.ir import GraphIndex
from onnxprune.core.stats import count_params
from onnxprune.structured.analysis import analyze
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.plan import make_plan
from onnxprune.structured.surgery import apply_plan

VARIANTS = {
    "conv-bn-per-channel-int8": (lambda: builders.conv_bn_relu(c_mid=10), {}),
    "mlp-per-channel-int8": (lambda: builders.mlp(batch=2), {}),
    "conv-per-tensor-int8": (lambda: builders.conv_relu_conv(batch=1, c_mid=10), {"per_channel": False}),
    "conv-per-channel-uint8": (lambda: builders.conv_relu_conv(batch=1, c_mid=10), {"unsigned": True}),
}


@pytest.fixture(params=sorted(VARIANTS))
def qdq(request: pytest.FixtureRequest, tmp_path: Path) -> onnx.ModelProto:
    build, options = VARIANTS[request.param]
    return onnx.load(quantize_qdq(build(), tmp_path, **options))


def _qdq_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))


def _output_step(model: onnx.ModelProto) -> float:
    """One quantization step of the model's output (the scale of the last DequantizeLinear)."""
    index = GraphIndex(model)
    dq = index.producer[model.graph.output[0].name]
    assert dq.op_type == "DequantizeLinear"
    return float(np.max(index.const_value(dq.input[1])))


def test_qdq_model_is_cut_in_place_and_equals_the_zeroed_qdq_original(qdq: onnx.ModelProto) -> None:
    dg = analyze(qdq)
    assert dg.prunable_groups, dg.summary()
    plan = make_plan(qdq, dg, ratio=0.3)
    assert plan.channels_removed > 0
    pruned = apply_plan(qdq, plan, dg=dg)
    reference = zeroed_reference(qdq, dg, plan)
    # channels really go: the parameter count (int8 weights and int32 biases included) drops as predicted
    removed = count_params(qdq) - count_params(pruned)
    assert removed > 0 and removed == sum(dg.params_removed({g: plan.keep[g]}) for g in plan.keep)
    # still quantized: every Q/DQ pair, every integer type
    assert _qdq_counts(pruned) == _qdq_counts(qdq)
    types = {t.name: t.data_type for t in qdq.graph.initializer}
    assert {t.name: t.data_type for t in pruned.graph.initializer} == types
    for ref_t in reference.graph.initializer:
        assert ref_t.data_type == types[ref_t.name]
    # the oracle: within one quantization step of the output (see the module docstring)
    onnx.checker.check_model(pruned, full_check=True)
    feeds = seeded_feeds(qdq)
    got, want = run_ort(pruned, feeds), run_ort(reference, feeds)
    step = _output_step(qdq)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert float(np.max(np.abs(g - w))) <= step + 1e-6
    # and the zeroed reference is not the original: the cut removed channels that mattered
    assert any(not np.array_equal(a, b) for a, b in zip(run_ort(qdq, feeds), want, strict=True))


def test_per_channel_scales_follow_the_cut_axis(tmp_path: Path) -> None:
    model = onnx.load(quantize_qdq(builders.conv_relu_conv(batch=1, c_mid=10), tmp_path))
    dg = analyze(model)
    group = dg.prunable_groups[0]
    plan = make_plan(model, dg, ratio=0.3)
    kept = len(plan.keep[group.id])
    pruned = GraphIndex(apply_plan(model, plan, dg=dg))
    shape = {t.name: list(t.dims) for t in pruned.graph.initializer}
    # producer: int8 weight, its per-channel scale and zero point and the int32 bias lose the same channels
    assert shape["w1_quantized"][0] == shape["w1_scale"][0] == shape["w1_zero_point"][0] == kept
    assert shape["b1_quantized"] == shape["b1_quantized_scale"] == [kept]
    # consumer: cut on axis 1 of a weight quantized along axis 0: only the int8 tensor is sliced
    assert shape["w2_quantized"][1] == kept
    assert shape["w2_scale"] == shape["w2_zero_point"] == [5]
    # activations' per-tensor Q/DQ scales stay scalars
    assert shape["r1_scale"] == shape["r1_zero_point"] == []
    w1 = numpy_helper.to_array(GraphIndex(model).initializers["w1_quantized"])
    np.testing.assert_array_equal(numpy_helper.to_array(pruned.initializers["w1_quantized"]),
                                  w1[plan.keep[group.id]])


def test_per_channel_activation_quantization_is_sliced() -> None:
    """x → Conv → "QuantizeLinear"(axis=1, per channel) → "DequantizeLinear" → Relu → Conv → out."""

    def middle(g: builders.GraphBuilder, y: str) -> str:
        scale = g.const(np.linspace(0.02, 0.05, 6).astype(np.float32), "act_scale")
        zp = g.const(np.arange(120, 126).astype(np.uint8), "act_zp")
        q = g.op("QuantizeLinear", [y, scale, zp], axis=1)
        return g.op("Relu", [g.op("DequantizeLinear", [q, scale, zp], axis=1)])

    model = sandwich(middle)
    _, group = first_group(model)
    assert group.prunable, group.blockers
    quant_cuts = {c.tensor.rsplit("_", 1)[0] for c in group.cuts if c.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert quant_cuts == {"act_scale", "act_zp"}
    dg, plan, pruned = check_prune(model, ratio=0.5, evaluator=False)
    kept = len(plan.keep[0])
    scales = [t for t in pruned.graph.initializer if t.name.startswith(("act_scale", "act_zp"))]
    assert scales and all(list(t.dims) == [kept] for t in scales)


def _block_quantized_model() -> onnx.ModelProto:
    """conv1 (float) → Relu → conv2 whose int8 weight is block-quantized (opset 21, block_size=2)."""
    r = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(r.standard_normal((6, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(r.integers(-100, 100, (4, 6, 1, 1)).astype(np.int8), "w2_q"),
        numpy_helper.from_array(r.uniform(0.01, 0.02, (4, 3, 1, 1)).astype(np.float32), "w2_scale"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("DequantizeLinear", ["w2_q", "w2_scale"], ["w2"], name="w2_dq", axis=1, block_size=2),
        helper.make_node("Conv", ["r1", "w2"], ["out"], name="conv2"),
    ]
    return builders.make_model(nodes, [builders.vinfo("x", [1, 3, 5, 5])], [builders.vinfo("out", [1, 4, 5, 5])],
                               inits, opset=21)


def test_block_quantization_blocks_with_a_reason_shown_by_analyze(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model = _block_quantized_model()
    dg = analyze(model)
    assert not dg.prunable_groups
    assert "block quantization" in " ".join(dg.groups[0].blockers)
    path = tmp_path / "block.onnx"
    onnx.save(model, path)
    assert main(["analyze", str(path), "--groups"]) == 0
    out = capsys.readouterr().out
    assert "blocked" in out and "block quantization (block_size) is not supported" in out


def test_importance_reads_quantized_weights_dequantized(tmp_path: Path) -> None:
    """Per-channel scales differ between channels, so criteria must rank (q - zp) * scale, not q."""
    from onnxprune.core.quant import dequantize, quantized_data
    from onnxprune.structured.importance import ImportanceContext

    model = onnx.load(quantize_qdq(builders.conv_relu_conv(batch=1, c_mid=10), tmp_path, unsigned=True))
    index = GraphIndex(model)
    dq = quantized_data(index)["w1_quantized"]
    want = dequantize(index, dq, numpy_helper.to_array(index.initializers["w1_quantized"]))
    got = ImportanceContext(model, analyze(model)).weight("w1_quantized")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
