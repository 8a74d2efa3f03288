"""Data-aware criteria: each one ranks what it says it ranks, on graphs with known statistics."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from builders import conv_relu_conv, gemm_stack, init, make_model, mlp, vinfo
from onnx import helper

from onnxprune.core.errors import ConfigError
from onnxprune.core.ir import GraphIndex
from onnxprune.recovery.calibrate import collect_stats, with_outputs
from onnxprune.recovery.data_criteria import channel_score, collect_group_stats, sparse_scores
from onnxprune.sparse.sparsify import sparsify, sparsify_nm
from onnxprune.structured.analysis import analyze
from onnxprune.structured.importance import ImportanceContext, get_criterion
from onnxprune.structured.plan import make_plan

ZERO_FRACS = np.array([0.9, 0.1, 0.5, 0.0, 0.7, 0.3])


def relu_gemm(d: int = 6, d_out: int = 4) -> object:
    """x → Relu (r) → Gemm(W all ones) → out: input columns differ only in their statistics."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w", "b"], ["out"], name="fc", transB=1),
    ]
    inits = [init("w", np.ones((d_out, d), np.float32)), init("b", np.zeros(d_out, np.float32))]
    return make_model(nodes, [vinfo("x", ["N", d])], [vinfo("out", ["N", d_out])], inits)


def known_zero_data(rows: int = 1000) -> np.ndarray:
    """Column j is negative (→ zero after Relu) in exactly ZERO_FRACS[j] of the rows, else 1.0."""
    x = np.ones((rows, len(ZERO_FRACS)), np.float32)
    for j, p in enumerate(ZERO_FRACS):
        x[: int(round(p * rows)), j] = -1.0
    return x


def test_apoz_ranks_by_known_zero_fraction():
    model = relu_gemm()
    x = known_zero_data()
    stats = collect_stats(model, [{"x": x[:400]}, {"x": x[400:]}], tensors=["r"])
    np.testing.assert_allclose(stats["r"].zero_frac, ZERO_FRACS)
    structured = channel_score(stats["r"], "apoz")
    assert list(np.argsort(structured)) == list(np.argsort(-ZERO_FRACS, kind="stable"))
    scores = sparse_scores(model, [{"x": x}], criterion="apoz", comparison="layer")["w"]
    np.testing.assert_allclose(scores, np.broadcast_to(1 - ZERO_FRACS, (4, 6)))
    # pruning half the weights removes exactly the columns with the most zeros
    pruned = sparsify(model, sparsity=0.5, scores={"w": scores}).model
    w = GraphIndex(pruned).const_value("w")
    assert set(np.flatnonzero((w == 0).all(axis=0))) == {0, 4, 2}


def test_activation_and_wanda_known_values():
    model = relu_gemm()
    x = known_zero_data()
    x[:, 3] *= 4.0  # larger activations in column 3
    r = np.maximum(x, 0).astype(np.float64)
    act = sparse_scores(model, [{"x": x}], criterion="activation", comparison="layer")["w"]
    np.testing.assert_allclose(act[0], np.abs(r).mean(0))
    wanda = sparse_scores(model, [{"x": x}], criterion="wanda", comparison="layer")["w"]
    np.testing.assert_allclose(wanda[0], np.linalg.norm(r, axis=0), rtol=1e-9)
    stats = collect_stats(model, [{"x": x}], tensors=["r"])
    np.testing.assert_allclose(channel_score(stats["r"], "activation"), np.abs(r).mean(0))
    with pytest.raises(ConfigError, match="no per-channel score"):
        channel_score(stats["r"], "wanda")
    with pytest.raises(ConfigError, match="unknown data-aware criterion 'l7'"):
        sparse_scores(model, [{"x": x}], criterion="l7")


def test_wanda_scores_every_layout_against_numpy():
    model = gemm_stack(d_in=6, hidden=5, d_out=4)
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((50, 6)).astype(np.float32),
             "y": rng.standard_normal((2, 3, 4)).astype(np.float32)}
    scores = sparse_scores(model, [feeds], criterion="wanda", comparison="layer")
    idx = GraphIndex(model)
    sess = ort.InferenceSession(with_outputs(model, ["hr"]).SerializeToString(), providers=["CPUExecutionProvider"])
    hr = sess.run(["hr"], feeds)[0].astype(np.float64)
    x = feeds["x"].astype(np.float64)
    # gemm0: W [K, N] (transB=0), input columns along axis 0
    np.testing.assert_allclose(scores["g0_w"], np.abs(idx.const_value("g0_w")) * np.linalg.norm(x, axis=0)[:, None],
                               rtol=1e-6)
    # gemm1: W [N, K] (transB=1), input columns along axis 1
    np.testing.assert_allclose(scores["g1_w"], np.abs(idx.const_value("g1_w")) * np.linalg.norm(hr, axis=0)[None],
                               rtol=1e-6)
    # batched MatMul: columns are the last axis of y, K is axis -2 of W
    ynorm = np.linalg.norm(feeds["y"].astype(np.float64).reshape(-1, 4), axis=0)
    np.testing.assert_allclose(scores["bm_w"], np.abs(idx.const_value("bm_w")) * ynorm[:, None], rtol=1e-6)


def test_wanda_conv_broadcasts_per_input_channel_and_feeds_nm():
    model = conv_relu_conv(c_in=4, c_mid=8, group=2, pads=1)
    x = np.random.default_rng(4).standard_normal((6, 4, 9, 9)).astype(np.float32)
    x[:, 1] *= 10.0
    scores = sparse_scores(model, [{"x": x}], criterion="wanda", comparison="layer")
    w1 = GraphIndex(model).const_value("w1")  # (8, 2, 3, 3): outputs 0-3 read channels 0-1, 4-7 read 2-3
    norms = np.linalg.norm(x.astype(np.float64).transpose(1, 0, 2, 3).reshape(4, -1), axis=1)
    expect = np.abs(w1) * np.concatenate([np.broadcast_to(norms[:2], (4, 2)),
                                          np.broadcast_to(norms[2:], (4, 2))])[:, :, None, None]
    np.testing.assert_allclose(scores["w1"], expect, rtol=1e-6)
    result = sparsify_nm(model, n=2, m=4, scores=scores)
    assert result.model is not None


def test_scores_plug_into_sparsify_and_fall_back_to_magnitude():
    model = mlp(d_in=8, hidden=6)
    x = np.random.default_rng(5).standard_normal((20, 8)).astype(np.float32)
    stats = collect_stats(model, [{"x": x}], tensors=["x"])  # only fc1's input measured
    scores = sparse_scores(model, stats, criterion="activation", comparison="layer")
    w2 = GraphIndex(model).const_value("fc2_w")
    np.testing.assert_allclose(scores["fc2_w"], np.abs(w2))  # no statistics for fc2's input: |W|
    assert set(scores) == {"fc1_w", "fc2_w"}


# -- structured criteria through make_plan -----------------------------------------------------------
def relu_chain() -> object:
    """x → Gemm(identity weights, 6 channels) → Relu (r) → Gemm → out: channel j of r is relu(x_j)."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["out"], name="fc2", transB=1),
    ]
    inits = [init("w1", np.eye(6, dtype=np.float32)), init("b1", np.zeros(6, np.float32)),
             init("w2", np.ones((3, 6), np.float32)), init("b2", np.zeros(3, np.float32))]
    return make_model(nodes, [vinfo("x", ["N", 6])], [vinfo("out", ["N", 3])], inits)


def test_structured_apoz_activation_wanda_rank_known_channels():
    model = relu_chain()
    dg = analyze(model)
    x = known_zero_data()
    x[:, 5] *= 3.0
    stats = collect_group_stats(model, dg, [{"x": x}])
    assert "r" in stats["activations"].channels
    plan = make_plan(model, dg, ratio=0.5, importance="apoz", statistics=stats)
    gid = next(iter(plan.keep))
    # the three channels with the most zeros (0.9, 0.7, 0.5) go
    assert list(plan.kept(gid)) == [1, 3, 5]
    plan = make_plan(model, dg, ratio=0.5, importance="activation", statistics=stats)
    r = np.maximum(x, 0)
    assert list(plan.kept(gid)) == sorted(np.argsort(-np.abs(r).mean(0))[:3])
    ctx = ImportanceContext(model=model, dg=dg, statistics=stats)
    wanda = get_criterion("wanda")(dg.groups[gid], ctx)
    expect = 3 * np.linalg.norm(r, axis=0)  # Σ|W| over fc2's 3 rows × ‖r_j‖
    np.testing.assert_allclose(wanda, expect / expect.max())
    with pytest.raises(ConfigError, match="needs calibration data"):
        make_plan(model, dg, ratio=0.5, importance="apoz")


def test_output_comparison_prunes_every_row_equally():
    model = gemm_stack(d_in=10, hidden=7, d_out=4)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((40, 10)).astype(np.float32)
    x[:, :3] *= 20.0  # a few loud inputs would take all the kept slots in a layer-wide ranking
    feeds = [{"x": x, "y": rng.standard_normal((2, 3, 4)).astype(np.float32)}]
    raw = sparse_scores(model, feeds, criterion="wanda", comparison="layer")
    ranked = sparse_scores(model, feeds, criterion="wanda")
    # g0_w is [K, N] (transB=0): output rows are columns; the order inside each output is unchanged
    for o in range(7):
        order = np.argsort(raw["g0_w"][:, o], kind="stable")
        assert list(np.argsort(ranked["g0_w"][:, o], kind="stable")) == list(order)
    w = GraphIndex(sparsify(model, sparsity=0.6, scores=ranked).model).const_value("g0_w")
    assert set((w == 0).sum(axis=0)) == {6}  # round(0.6 * 10) of every output's 10 inputs
    w_layer = GraphIndex(sparsify(model, sparsity=0.6, scores=raw).model).const_value("g0_w")
    assert len(set((w_layer == 0).sum(axis=0))) > 1
    with pytest.raises(ConfigError, match="comparison must be"):
        sparse_scores(model, feeds, criterion="wanda", comparison="row")
