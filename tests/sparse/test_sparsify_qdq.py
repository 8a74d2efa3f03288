"""Sparsity on QDQ models: int8/uint8 weights are zeroed in place (set to their zero point), never folded.

Each model is a builders float model through onnxruntime's ``quantize_static`` (QDQ format): per-channel
int8 weights (symmetric, zero point 0), per-tensor int8, and per-channel uint8 (asymmetric, zero points
around 128, so a "zero" that wrote 0 instead of the zero point would be caught).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from oracle_check import run_ort, seeded_feeds
from qdq_models import quantize_qdq

import onnxprune as op
from onnxprune.core.ir import GraphIndex
from onnxprune.core.quant import quantized_data, zero_point
from onnxprune.core.weights import find_prunable_weights

VARIANTS = {
    "conv-per-channel-int8": (lambda: builders.conv_bn_relu(), {}),
    "mlp-per-channel-int8": (lambda: builders.mlp(batch=2), {}),
    "conv-per-tensor-int8": (lambda: builders.conv_relu_conv(batch=1, c_mid=8), {"per_channel": False}),
    "conv-per-channel-uint8": (lambda: builders.conv_relu_conv(batch=1, c_mid=8), {"unsigned": True}),
}


@pytest.fixture(params=sorted(VARIANTS))
def qdq(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    build, options = VARIANTS[request.param]
    return quantize_qdq(build(), tmp_path, **options)


def _qdq_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))


def _zero_counts(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """Quantized weight → (entries equal to its zero point, entries)."""
    index = GraphIndex(model)
    out = {}
    for pw in find_prunable_weights(model):
        assert pw.quant is not None
        w = numpy_helper.to_array(index.initializers[pw.name])
        out[pw.name] = (int(np.count_nonzero(w == zero_point(index, pw.quant, w.ndim))), w.size)
    return out


def test_weights_are_found_through_dequantize_linear(qdq: Path) -> None:
    model = onnx.load(qdq)
    weights = find_prunable_weights(model)
    assert weights, "no quantized weight found"
    for pw in weights:
        assert pw.data_type in (TensorProto.INT8, TensorProto.UINT8)
        assert pw.quant is not None and pw.quant.data == pw.name
        assert set(pw.op_types) <= {"Conv", "Gemm", "MatMul"}


@pytest.mark.parametrize("mode", ["unstructured", "nm"])
def test_sparsity_stays_quantized_and_exact(qdq: Path, tmp_path: Path, mode: str) -> None:
    original = onnx.load(qdq)
    config = op.PruneConfig(mode="unstructured", sparsity=0.5) if mode == "unstructured" else \
        op.PruneConfig(mode="nm", nm="2:4")
    out = tmp_path / "pruned.onnx"
    result = op.prune(str(qdq), config, output=str(out))
    pruned = onnx.load(out)
    # the file does not grow (a float fold of the weights made it 3.6x larger) and every Q/DQ pair stays
    assert out.stat().st_size <= qdq.stat().st_size
    assert _qdq_counts(pruned) == _qdq_counts(original)
    types = {t.name: t.data_type for t in original.graph.initializer}
    assert {t.name: t.data_type for t in pruned.graph.initializer} == types
    before, after = _zero_counts(original), _zero_counts(pruned)
    assert set(after) == set(before) and after
    assert not result.report.get("folded_constants")
    layers = {r["name"]: r for r in result.report["layers"]}
    assert layers and set(layers) <= set(after)
    for name, (zeros, numel) in after.items():
        if name not in layers:  # N:M skips a reduction size that is not a multiple of 4 (27 for 3x3x3)
            assert mode == "nm" and zeros == before[name][0], name
        elif mode == "unstructured":  # exactly round(0.5 * numel) entries at the zero point
            assert zeros == max(before[name][0], round(0.5 * numel)), name
        else:
            assert zeros >= numel // 2, name
    for name, r in layers.items():  # the report counts entries at the zero point as zeros
        assert r["zeros_after"] == after[name][0]
    feeds = seeded_feeds(original)
    got = run_ort(pruned, feeds)
    assert all(np.isfinite(g).all() for g in got)


def test_survivors_keep_their_bits_and_zeroed_entries_dequantize_to_zero(qdq: Path) -> None:
    model = onnx.load(qdq)
    result = op.sparsify(model, sparsity=0.5)
    index, new_index = GraphIndex(model), GraphIndex(result.model)
    quant = quantized_data(index)
    weights = find_prunable_weights(model)
    assert weights and [r.name for r in result.layers] == [pw.name for pw in weights]
    for pw in weights:
        w = numpy_helper.to_array(index.initializers[pw.name])
        v = numpy_helper.to_array(new_index.initializers[pw.name])
        assert v.dtype == w.dtype
        changed = v != w
        zp = np.broadcast_to(zero_point(index, quant[pw.name], w.ndim), w.shape)
        assert np.array_equal(v[changed], zp[changed])  # set to the zero point, per channel
        # the smallest dequantized magnitudes went: every pruned |dequantized| <= every kept one
        scale = np.asarray(index.const_value(pw.quant.scale), np.float32)
        shape = [1] * w.ndim
        if pw.quant.axis is not None:
            shape[pw.quant.axis] = -1
        deq = np.abs((w.astype(np.int32) - zp.astype(np.int32)) * scale.reshape(shape))
        pruned = v == zp
        assert deq[pruned].max() <= deq[~pruned].min()


def test_nm_groups_run_along_the_reduction_axis_of_the_int8_weight(tmp_path: Path) -> None:
    model = onnx.load(quantize_qdq(builders.mlp(batch=2), tmp_path))
    result = op.sparsify_nm(model, n=2, m=4)
    index = GraphIndex(result.model)
    fc1 = numpy_helper.to_array(index.initializers["fc1_w_quantized"])  # Gemm transB=1: [N, K], K is axis 1
    zp = np.broadcast_to(zero_point(index, quantized_data(index)["fc1_w_quantized"], 2), fc1.shape)
    kept = (fc1 != zp).reshape(fc1.shape[0], -1, 4).sum(axis=2)
    assert kept.max() <= 2


def test_qoperator_models_are_refused_with_a_reason(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantFormat

    path = quantize_qdq(builders.conv_relu_conv(batch=1, c_mid=8), tmp_path, "qop", quant_format=QuantFormat.QOperator)
    result = op.sparsify(onnx.load(path), sparsity=0.5)
    assert not result.layers
    assert any("QOperator" in s.reason for s in result.skipped)
    unanalysed = op.analyze(onnx.load(path)).unanalysed  # structured: said, not silently skipped
    assert len(unanalysed) == 2 and all("QOperator" in reason for reason in unanalysed)
