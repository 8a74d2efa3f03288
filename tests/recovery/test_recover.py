"""Recovery: least-squares re-fit, bias compensation and masked re-fit on problems with known answers."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import conv_bn_relu, conv_relu_conv, gemm_stack, matmul_chain, mlp
from onnx import numpy_helper

from onnxprune.core.errors import ConfigError
from onnxprune.core.io import load_model
from onnxprune.core.ir import GraphIndex, attr
from onnxprune.core.weights import find_prunable_weights, get_weight, set_weight
from onnxprune.recovery.calibrate import collect_stats, with_outputs
from onnxprune.recovery.recover import recover_sparse, recover_structured
from onnxprune.recovery.solvers import affine_refit, bn_channel_mean, compensate_bias, lstsq_refit, masked_refit
from onnxprune.sparse.sparsify import sparsify, sparsify_nm
from onnxprune.structured.analysis import analyze
from onnxprune.structured.plan import PrunePlan
from onnxprune.structured.surgery import apply_plan


def _data(rows: int = 200, k: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, k))


def test_lstsq_exact_when_dropped_column_is_combination_of_kept():
    x = _data()
    x[:, 4] = 0.5 * x[:, 0] - 2.0 * x[:, 3]      # dropped columns 4 and 5 are combinations of kept ones
    x[:, 5] = x[:, 1] + x[:, 2]
    w = np.random.default_rng(1).standard_normal((3, 6))
    keep = np.arange(4)
    g = x.T @ x
    w_new = lstsq_refit(w[:, keep], g[np.ix_(keep, keep)], g[keep] @ w.T, ridge=0.0)
    np.testing.assert_allclose(x[:, keep] @ w_new.T, x @ w.T, atol=1e-9)
    # plain pruning is far off, so the test can fail
    assert np.abs(x[:, keep] @ w[:, keep].T - x @ w.T).max() > 0.5


def test_lstsq_ridge_pulls_towards_current_weights():
    x = _data()
    w = np.random.default_rng(2).standard_normal((2, 6))
    keep = np.array([0, 2, 3])
    g = x.T @ x
    exact = lstsq_refit(w[:, keep], g[np.ix_(keep, keep)], g[keep] @ w.T, ridge=0.0)
    huge = lstsq_refit(w[:, keep], g[np.ix_(keep, keep)], g[keep] @ w.T, ridge=1e9)
    np.testing.assert_allclose(huge, w[:, keep], atol=1e-6)
    # the unregularized fit is the best one on the data
    err = [np.linalg.norm(x[:, keep] @ v.T - x @ w.T) for v in (exact, huge)]
    assert err[0] < err[1]
    with pytest.raises(ConfigError, match="ridge must be"):
        lstsq_refit(w[:, keep], g[np.ix_(keep, keep)], g[keep] @ w.T, ridge=-1)
    with pytest.raises(ConfigError, match="shapes do not fit"):
        lstsq_refit(w, g[np.ix_(keep, keep)], g[keep] @ w.T)


def test_affine_refit_matches_numpy_lstsq_with_intercept():
    x = _data(300, 5, seed=3) + 2.0  # non-zero means: the bias matters
    w = np.random.default_rng(4).standard_normal((4, 5))
    b = np.random.default_rng(5).standard_normal(4)
    keep = np.array([0, 1, 3])
    y = x @ w.T + b
    w_new, b_new = affine_refit(w, b, x.T @ x, x.sum(0), x.shape[0], keep, ridge=0.0)
    design = np.hstack([x[:, keep], np.ones((x.shape[0], 1))])
    ref = np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(w_new, ref[:3].T, atol=1e-8)
    np.testing.assert_allclose(b_new, ref[3], atol=1e-8)


def test_bias_compensation_exact_for_constant_channel():
    x = _data(100, 4, seed=6)
    x[:, 2] = 3.5  # constant channel, dropped
    w = np.random.default_rng(7).standard_normal((3, 4))
    b = np.random.default_rng(8).standard_normal(3)
    keep, drop = np.array([0, 1, 3]), np.array([2])
    b_new = compensate_bias(w, b, drop, x.mean(0))
    np.testing.assert_allclose(x[:, keep] @ w[:, keep].T + b_new, x @ w.T + b, atol=1e-12)
    assert np.abs(x[:, keep] @ w[:, keep].T + b - (x @ w.T + b)).max() > 0.1
    # no bias at all: the compensation creates one
    np.testing.assert_allclose(compensate_bias(w, None, drop, x.mean(0)), w[:, 2] * 3.5)


def test_bn_channel_mean_closed_form_matches_sampling():
    beta = np.array([-1.0, 0.0, 0.7, 2.0])
    gamma = np.array([0.5, 1.0, -1.3, 0.0])  # a negative gamma has the same spread; zero gamma is constant
    z = np.random.default_rng(9).standard_normal((400_000, 1))
    sampled = np.maximum(beta + gamma * z, 0).mean(0)
    np.testing.assert_allclose(bn_channel_mean(beta, gamma, relu=True), sampled, atol=5e-3)
    np.testing.assert_allclose(bn_channel_mean(beta, gamma, relu=False), beta)
    assert math.isclose(bn_channel_mean(np.array([0.0]), np.array([1.0]), relu=True)[0], 1 / math.sqrt(2 * math.pi))


@pytest.mark.parametrize("method", ["direct", "cg"])
def test_masked_refit_matches_per_row_lstsq(method):
    r = np.random.default_rng(10)
    x = r.standard_normal((400, 12))
    x[:, 6:] = x[:, :6] + 0.2 * x[:, 6:]  # correlated inputs: re-fit has something to gain
    w = r.standard_normal((5, 12))
    mask = r.random((5, 12)) > 0.5
    mask[1] = mask[0]  # two rows share a mask (one factorization)
    w_new = masked_refit(w, mask, x.T @ x, ridge=0.0, method=method, tol=1e-12, max_iter=500)
    assert np.all(w_new[~mask] == 0)
    for o in range(5):
        s = np.flatnonzero(mask[o])
        ref = np.linalg.lstsq(x[:, s], x @ w[o], rcond=None)[0]
        np.testing.assert_allclose(w_new[o, s], ref, atol=1e-6)
    before = np.linalg.norm(x @ (w * mask).T - x @ w.T)
    after = np.linalg.norm(x @ w_new.T - x @ w.T)
    assert after < 0.8 * before


def test_masked_refit_nm_rows_and_errors():
    r = np.random.default_rng(11)
    x = r.standard_normal((300, 8))
    w = r.standard_normal((4, 8))
    mask = np.zeros((4, 8), bool)
    for o in range(4):  # 2:4 pattern
        for start in (0, 4):
            mask[o, start + np.argsort(-np.abs(w[o, start:start + 4]))[:2]] = True
    auto = masked_refit(w, mask, x.T @ x)
    direct = masked_refit(w, mask, x.T @ x, method="direct")
    np.testing.assert_allclose(auto, direct)
    assert np.all((auto != 0).reshape(4, 2, 4).sum(-1) <= 2)
    with pytest.raises(ConfigError, match="method must be"):
        masked_refit(w, mask, x.T @ x, method="svd")
    with pytest.raises(ConfigError, match="shapes do not fit"):
        masked_refit(w, mask[:, :4], x.T @ x)


# -- recover_sparse on real onnxruntime sessions ----------------------------------------------------
def _outputs(model, feeds, names):
    sess = ort.InferenceSession(with_outputs(model, names).SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, feeds), strict=True))


def _correlated(rows: int, d: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    base = r.standard_normal((rows, d // 2))
    return np.hstack([base, base + 0.3 * r.standard_normal((rows, d - d // 2))]).astype(np.float32)


@pytest.mark.parametrize("builder", [mlp, gemm_stack])
def test_recover_sparse_lstsq_refits_rows_exactly_and_keeps_pattern(builder):
    model = builder(d_in=16)
    x = _correlated(300, 16, seed=12)
    feeds = [{"x": x[:150]}, {"x": x[150:]}]
    if builder is gemm_stack:
        feeds = [dict(f, y=np.zeros((2, 3, 8), np.float32)) for f in feeds]
    sparse = sparsify(model, sparsity=0.7).model
    out = recover_sparse(model, sparse, feeds, ridge=0.0)
    before, after = GraphIndex(sparse), GraphIndex(out)
    first = model.graph.node[0]
    w_dense = GraphIndex(model).const_value(first.input[1]).astype(np.float64)
    w_sparse, w_new = before.const_value(first.input[1]), after.const_value(first.input[1])
    np.testing.assert_array_equal(w_sparse == 0, w_new == 0)  # the pattern is untouched
    rows_dense = w_dense if attr(first, "transB", 17, 0) else w_dense.T
    rows_new = w_new if attr(first, "transB", 17, 0) else w_new.T
    xd = x.astype(np.float64)
    for o in range(rows_dense.shape[0]):  # the first layer's input is x itself: a known least-squares answer
        s = np.flatnonzero(rows_new[o] != 0)
        ref = np.linalg.lstsq(xd[:, s], xd @ rows_dense[o], rcond=None)[0]
        np.testing.assert_allclose(rows_new[o, s], ref, rtol=1e-3, atol=1e-3)
    ref_out = _outputs(model, feeds[0], ["out"])["out"]
    err = [np.linalg.norm(_outputs(m, feeds[0], ["out"])["out"] - ref_out) for m in (sparse, out)]
    assert err[1] < 0.9 * err[0]
    assert model.graph.node[0].input[1] in {t.name for t in out.graph.initializer}


def test_recover_sparse_bias_exact_for_constant_column_and_adds_missing_bias():
    model = matmul_chain(d_in=6)
    x = np.random.default_rng(13).standard_normal((40, 6)).astype(np.float32)
    x[:, 2] = 1.5
    sparse = load_model(model)
    pw = next(p for p in find_prunable_weights(sparse) if p.name == "w1")
    w = get_weight(sparse, pw)
    w[2, :] = 0  # zero every weight reading the constant column
    set_weight(sparse, pw, w)
    out = recover_sparse(model, sparse, [{"x": x}], method="bias")
    adds = [n for n in out.graph.node if n.op_type == "Add"]
    assert len(adds) == 1 and adds[0].output[0] == "h"  # a bias Add was inserted, name 'h' kept downstream
    onnx.checker.check_model(out, full_check=True)
    got = _outputs(out, {"x": x}, ["h"])["h"]
    ref = _outputs(model, {"x": x}, ["h"])["h"]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.abs(_outputs(sparse, {"x": x}, ["h"])["h"] - ref).max() > 0.1


def test_recover_sparse_conv_nm_and_errors():
    model = conv_relu_conv(c_in=4, c_mid=8, pads=1)
    x = np.random.default_rng(14).standard_normal((12, 4, 9, 9)).astype(np.float32)
    sparse = sparsify_nm(model, n=2, m=4).model
    out = recover_sparse(model, sparse, [{"x": x}])
    for name in ("w1", "w2"):
        w_s, w_n = GraphIndex(sparse).const_value(name), GraphIndex(out).const_value(name)
        np.testing.assert_array_equal(w_s == 0, w_n == 0)
    ref = _outputs(model, {"x": x}, ["out"])["out"]
    err = [np.linalg.norm(_outputs(m, {"x": x}, ["out"])["out"] - ref) for m in (sparse, out)]
    assert err[1] < err[0]
    with pytest.raises(ConfigError, match="method must be lstsq or bias"):
        recover_sparse(model, sparse, [{"x": x}], method="magic")
    with pytest.raises(ConfigError, match="not in the original model"):
        recover_sparse(mlp(), sparse, [{"x": x}])


# -- structured recovery ----------------------------------------------------------------------------
def _group_of_source(dg, weight: str):
    return next(g for g in dg.prunable_groups if any(c.tensor == weight for c in g.sources))


def _cut(model, weight: str, drop: list[int]):
    dg = analyze(model)
    g = _group_of_source(dg, weight)
    keep = np.setdiff1d(np.arange(g.size), drop)
    plan = PrunePlan(fingerprint=dg.fingerprint, keep={g.id: keep}, sizes={g.id: g.size})
    return dg, plan, apply_plan(model, plan, dg=dg)


def _set_init(model, name: str, value: np.ndarray) -> None:
    t = next(t for t in model.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def test_structured_lstsq_exact_when_dropped_channel_is_combination_of_kept():
    model = conv_relu_conv(c_in=3, c_mid=6, c_out=4, kernel=3, pads=1)
    idx = GraphIndex(model)
    w1, b1 = idx.const_value("w1").copy(), idx.const_value("b1").copy()
    w1[3], b1[3] = 2.0 * w1[0], 2.0 * b1[0]   # relu(2z) = 2 relu(z): channel 3 is twice channel 0
    w1[5], b1[5] = 0.5 * w1[1], 0.5 * b1[1]
    _set_init(model, "w1", w1)
    _set_init(model, "b1", b1)
    # conv2 as a 3x3 conv with padding, so the re-fit runs on im2col columns
    w2 = np.random.default_rng(15).standard_normal((4, 6, 3, 3)).astype(np.float32)
    _set_init(model, "w2", w2)
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    conv2.attribute.append(onnx.helper.make_attribute("pads", [1, 1, 1, 1]))
    dg, plan, pruned = _cut(model, "w1", [3, 5])
    x = np.random.default_rng(16).standard_normal((10, 3, 9, 9)).astype(np.float32)
    ref = _outputs(model, {"x": x}, ["out"])["out"]
    assert np.abs(_outputs(pruned, {"x": x}, ["out"])["out"] - ref).max() > 0.5
    rec = recover_structured(model, pruned, dg, plan, [{"x": x[:5]}, {"x": x[5:]}], method="lstsq", ridge=0.0)
    onnx.checker.check_model(rec, full_check=True)
    np.testing.assert_allclose(_outputs(rec, {"x": x}, ["out"])["out"], ref, atol=2e-3)


def test_structured_bias_exact_when_dropped_channel_is_constant():
    model = conv_relu_conv(c_in=3, c_mid=5, c_out=4, pads=1)  # conv2 is 1x1 without padding
    idx = GraphIndex(model)
    w1, b1 = idx.const_value("w1").copy(), idx.const_value("b1").copy()
    w1[2], b1[2] = 0.0, 1.7   # channel 2 is relu(1.7) = 1.7 everywhere
    _set_init(model, "w1", w1)
    _set_init(model, "b1", b1)
    dg, plan, pruned = _cut(model, "w1", [2])
    x = np.random.default_rng(17).standard_normal((6, 3, 9, 9)).astype(np.float32)
    ref = _outputs(model, {"x": x}, ["out"])["out"]
    assert np.abs(_outputs(pruned, {"x": x}, ["out"])["out"] - ref).max() > 0.1
    rec = recover_structured(model, pruned, dg, plan, [{"x": x}], method="bias")
    np.testing.assert_allclose(_outputs(rec, {"x": x}, ["out"])["out"], ref, atol=1e-5)
    # the precomputed-statistics path gives the same model
    stats = collect_stats(model, [{"x": x}], tensors={"r1": 1})
    again = recover_structured(model, pruned, dg, plan, stats, method="bias")
    np.testing.assert_allclose(GraphIndex(again).const_value(again.graph.node[-1].input[2]),
                               GraphIndex(rec).const_value(rec.graph.node[-1].input[2]))


def test_structured_bias_data_free_from_batchnorm():
    model = conv_bn_relu(c_mid=6)
    dg, plan, pruned = _cut(model, "w1", [1, 4])
    rec = recover_structured(model, pruned, dg, plan, None, method="bias")
    idx = GraphIndex(model)
    means = bn_channel_mean(idx.const_value("beta"), idx.const_value("gamma"), relu=True)
    w2, b2 = idx.const_value("w2").astype(np.float64), idx.const_value("b2").astype(np.float64)
    expect = b2 + w2[:, [1, 4]].sum(axis=(2, 3)) @ means[[1, 4]]
    conv2 = next(n for n in rec.graph.node if n.name == "conv2")
    np.testing.assert_allclose(GraphIndex(rec).const_value(conv2.input[2]), expect, rtol=1e-5)
    # weights are untouched by bias recovery
    np.testing.assert_array_equal(GraphIndex(rec).const_value(conv2.input[1]), GraphIndex(pruned).const_value("w2"))
    with pytest.raises(ConfigError, match="needs calibration data"):
        recover_structured(model, pruned, dg, plan, None, method="lstsq")
    with pytest.raises(ConfigError, match="must be one of bias, lstsq"):
        recover_structured(model, pruned, dg, plan, None, method="magic")
    with pytest.raises(ConfigError, match="pass the model apply_plan returned"):
        recover_structured(model, model, dg, plan, None, method="bias")


def test_structured_lstsq_on_linear_layers_improves_output():
    model = mlp(d_in=12, hidden=16, d_out=5)
    dg, plan, pruned = _cut(model, "fc1_w", [0, 3, 7, 9, 12])
    x = _correlated(400, 12, seed=18)
    ref = _outputs(model, {"x": x}, ["out"])["out"]
    rec = recover_structured(model, pruned, dg, plan, [{"x": x}], method="lstsq")
    err = [np.linalg.norm(_outputs(m, {"x": x}, ["out"])["out"] - ref) for m in (pruned, rec)]
    assert err[1] < 0.9 * err[0]
    # the MatMul sink's bias lives in the following Add; it was updated, not duplicated
    assert sum(n.op_type == "Add" for n in rec.graph.node) == 1
