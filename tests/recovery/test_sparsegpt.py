"""SparseGPT: the blockwise OBS update against an independent reference, exact counts, N:M along the reduction
axis, lower reconstruction error than magnitude and Wanda on the shipped digits models, and its error paths."""

from __future__ import annotations

from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from builders import init, make_model, vinfo
from onnx import helper, numpy_helper
from qdq_models import quantize_qdq

from onnxprune.cli.main import main
from onnxprune.core.errors import ConfigError
from onnxprune.core.io import load_model
from onnxprune.core.ir import GraphIndex
from onnxprune.core.weights import find_prunable_weights, get_weight
from onnxprune.recovery.calibrate import collect_stats, weight_rows
from onnxprune.recovery.data_criteria import sparse_scores
from onnxprune.recovery.sequential import sparsify_calibrated
from onnxprune.recovery.sparsegpt import sparsegpt_rows, split_count
from onnxprune.sparse.sparsify import sparsify, sparsify_nm

MODELS = Path(__file__).resolve().parents[2] / "models"


# -- an independent reference ----------------------------------------------------------------------
def reference_sparsegpt(w: np.ndarray, x: np.ndarray, *, sparsity: float | None = None,
                        nm: tuple[int, int] | None = None, block: int = 128, damp: float = 0.01) -> np.ndarray:
    """SparseGPT written from its definition, without the Cholesky trick or lazy batches.

    Columns are frozen left to right. Before column ``j`` is frozen, the free columns ``F = {j..K-1}`` hold
    the optimum of ``(w − w0)ᵀ H (w − w0)`` given the frozen ones: ``d_F = −d_P H_PF H_FF⁻¹``. The saliency of
    column ``c`` is ``cur_c² / [H_{c..}⁻¹]_00``; unstructured zeros are chosen per block of columns when the
    block starts (block counts rounded cumulatively), N:M zeros per row and group of ``m`` when it starts.
    """
    r, k = w.shape
    h = x.T.astype(np.float64) @ x.astype(np.float64)
    h += damp * np.mean(np.diag(h)) * np.eye(k)
    out = w.astype(np.float64).copy()
    mask = np.zeros((r, k), dtype=bool)
    total = round(sparsity * w.size) if sparsity is not None else 0
    done = 0
    for j in range(k):
        d_p = out[:, :j] - w[:, :j]
        cur = w[:, j:] - d_p @ h[:j, j:] @ np.linalg.inv(h[j:, j:])

        def saliency(cols: range, cur: np.ndarray = cur, j: int = j) -> np.ndarray:
            return np.stack([cur[:, c - j] ** 2 / np.linalg.inv(h[c:, c:])[0, 0] for c in cols], axis=1)

        if sparsity is not None and j % block == 0:
            end = min(j + block, k)
            upto = round(total * (r * end) / w.size)
            s = saliency(range(j, end))
            order = np.argsort(s.ravel(), kind="stable")[: upto - done]
            done = upto
            chosen = np.zeros(s.size, dtype=bool)
            chosen[order] = True
            mask[:, j:end] = chosen.reshape(s.shape)
        if nm is not None and j % nm[1] == 0:
            s = saliency(range(j, j + nm[1]))
            order = np.argsort(s, axis=1, kind="stable")[:, : nm[1] - nm[0]]
            np.put_along_axis(mask[:, j:j + nm[1]], order, True, axis=1)
        out[:, j] = np.where(mask[:, j], 0.0, cur[:, 0])
    return out


def _correlated(rows: int, k: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    return (r.standard_normal((rows, k)) @ r.standard_normal((k, k))).astype(np.float32)


@pytest.mark.parametrize("target", [{"sparsity": 0.5}, {"sparsity": 0.37}, {"nm": (2, 4)}, {"nm": (1, 4)}])
def test_obs_update_with_blocks_equals_the_reference(target: dict) -> None:
    x = _correlated(300, 24, 0)
    w = np.random.default_rng(1).standard_normal((6, 24))
    zeros = round(target["sparsity"] * w.size) if "sparsity" in target else None
    got, mask = sparsegpt_rows(w, x.T.astype(np.float64) @ x, zeros=zeros, nm=target.get("nm"), block_size=8)
    ref = reference_sparsegpt(w, x, block=8, **target)
    np.testing.assert_array_equal(mask, ref == 0)
    np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-9)
    # the update matters: the survivors moved away from the dense weights
    assert np.abs(got - w)[~mask].max() > 0.05


def _one_matmul(w: np.ndarray) -> onnx.ModelProto:
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")
    return make_model([node], [vinfo("x", ["N", w.shape[0]])], [vinfo("y", ["N", w.shape[1]])], [init("w", w)])


@pytest.mark.parametrize("target", [{"sparsity": 0.5}, {"nm": (2, 4)}])
def test_one_layer_model_through_onnxruntime_equals_the_reference(target: dict) -> None:
    w = np.random.default_rng(2).standard_normal((24, 6)).astype(np.float32)  # MatMul weight [K, N]
    x = _correlated(256, 24, 3)
    model = _one_matmul(w)
    out = sparsify_calibrated(model, [{"x": x[:100]}, {"x": x[100:]}], criterion="sparsegpt",
                              sparsity=target.get("sparsity", 0.5), nm=target.get("nm"))
    got = numpy_helper.to_array(out.model.graph.initializer[0])
    ref = reference_sparsegpt(w.T.astype(np.float64), x, **target).T
    np.testing.assert_array_equal(got == 0, ref == 0)
    np.testing.assert_allclose(got, ref.astype(np.float32), rtol=1e-4, atol=1e-6)
    assert out.info["sparsegpt"]["updated"] == ["w"]
    assert get_weight(model, find_prunable_weights(model)[0]).tolist() == w.tolist()  # input untouched


def test_split_count_is_exact_and_keeps_existing_zeros() -> None:
    assert sum(split_count(37, [24, 24, 24, 8], [0, 0, 0, 0])) == 37
    assert split_count(5, [4, 4], [3, 0]) == [3, 2]
    assert split_count(2, [4, 4], [3, 0]) == [3, 0]  # more zeros than asked: every existing one stays
    assert all(0 <= s <= 8 for s in split_count(40, [8] * 5, [8, 0, 0, 0, 0]))


# -- exactness and the N:M axis --------------------------------------------------------------------
def _calib(model: onnx.ModelProto, n: int = 64, seed: int = 0) -> list[dict[str, np.ndarray]]:
    r = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        dims = [d.dim_value if d.dim_value else n for d in vi.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = r.standard_normal(dims).astype(dtype)
    return [feeds]


def test_exact_count_per_layer_and_existing_zeros_stay_zero() -> None:
    model = load_model(MODELS / "digits_cnn.onnx")
    index = GraphIndex(model)
    holed = {}
    for pw in find_prunable_weights(model)[:3]:  # pre-existing zeros in some layers
        t = index.initializers[pw.name]
        w = numpy_helper.to_array(t).copy()
        w.reshape(-1)[::3] = 0.0
        holed[pw.name] = w == 0
        t.CopyFrom(numpy_helper.from_array(w, pw.name))
    out = sparsify_calibrated(model, MODELS / "digits_cnn_calib.npz", criterion="sparsegpt", sparsity=0.37)
    assert out.info["sparsegpt"]["magnitude_instead"] == []
    for layer in out.result.layers:
        w = get_weight(out.model, next(p for p in find_prunable_weights(out.model) if p.name == layer.name))
        zeros = int(np.count_nonzero(w == 0))
        assert zeros == max(round(0.37 * w.size), layer.zeros_before) == layer.zeros_after, layer.name
        if layer.name in holed:
            assert np.all(w[holed[layer.name]] == 0)


def _groups_along(w: np.ndarray, axes: tuple[int, ...], m: int) -> np.ndarray:
    """Zeros per group of ``m`` consecutive entries along the flattened ``axes`` (moved last)."""
    moved = np.moveaxis(w, axes, tuple(range(w.ndim - len(axes), w.ndim)))
    flat = moved.reshape(-1, int(np.prod([w.shape[a] for a in axes])))
    return (flat.reshape(flat.shape[0], -1, m) == 0).sum(axis=2)


@pytest.mark.parametrize("build", [lambda: builders.gemm_stack(d_in=16, hidden=24, d_out=8),
                                   lambda: builders.mlp(d_in=16, hidden=32),
                                   lambda: builders.conv_relu_conv(c_in=4, c_mid=8, c_out=4)],
                         ids=["gemm-transB0-transB1", "gemm-matmul", "conv"])
def test_2_4_groups_run_along_the_reduction_axis(build) -> None:
    model = build()
    out = sparsify_calibrated(model, _calib(model), criterion="sparsegpt", nm=(2, 4))
    updated = set(out.info["sparsegpt"]["updated"])
    index = GraphIndex(model)
    wrong_axis_ok = []
    for pw in find_prunable_weights(model):
        if pw.name not in updated:
            continue
        w = get_weight(out.model, pw)
        node = index.nodes_by_name[pw.readers[0]]
        axes = {"Conv": (1, 2, 3), "MatMul": (0,)}.get(node.op_type) or (
            (1,) if any(a.name == "transB" and a.i for a in node.attribute) else (0,))
        assert axes == pw.reduction_axes
        assert np.all(_groups_along(w, axes, 4) >= 2), pw.name
        assert np.count_nonzero(w == 0) == w.size // 2
        other = tuple(a for a in range(w.ndim) if a not in axes)[:1]
        if w.shape[other[0]] % 4 == 0:
            wrong_axis_ok.append(bool(np.all(_groups_along(w, other, 4) >= 2)))
    assert updated and wrong_axis_ok and not all(wrong_axis_ok)  # the check would catch the other axis


def test_fp16_weights_are_updated_in_their_dtype_with_exact_counts() -> None:
    model = builders.fp16_classifier()
    out = sparsify_calibrated(model, _calib(model, n=16), criterion="sparsegpt", sparsity=0.5)
    assert out.info["sparsegpt"]["updated"]
    for layer in out.result.layers:
        pw = next(p for p in find_prunable_weights(out.model) if p.name == layer.name)
        w = get_weight(out.model, pw)
        assert w.dtype == np.float16
        assert int(np.count_nonzero(w == 0)) == round(0.5 * w.size) == layer.zeros_after


def test_quantized_model_is_refused_with_the_way_out(tmp_path: Path) -> None:
    qdq = quantize_qdq(builders.mlp(batch=2), tmp_path)
    with pytest.raises(ConfigError, match="quantized.*--importance wanda or magnitude"):
        sparsify_calibrated(qdq, _calib(load_model(qdq), n=2), criterion="sparsegpt")


def test_shared_weight_is_pruned_by_magnitude_and_said() -> None:
    model = builders.shared_weight_convs()
    out = sparsify_calibrated(model, _calib(model, n=4), criterion="sparsegpt", sparsity=0.5)
    declined = out.info["sparsegpt"]["magnitude_instead"]
    assert declined and "read by 2 layers" in declined[0]["reason"]
    assert out.result.sparsity == pytest.approx(0.5, abs=0.01)


# -- better than magnitude and Wanda on the shipped models --------------------------------------------
def _reconstruction_error(dense: onnx.ModelProto, sparse: onnx.ModelProto, stats) -> float:
    """Σ over layers of ‖XW − XŴ‖² on the calibration data, from the dense model's input Grams."""
    index = GraphIndex(dense)
    total = 0.0
    for pw in find_prunable_weights(dense):
        node = index.nodes_by_name[pw.readers[0]]
        d = weight_rows(node, get_weight(dense, pw).astype(np.float64), index.opset) - weight_rows(
            node, get_weight(sparse, pw).astype(np.float64), index.opset)
        g = stats.grams[pw.readers[0]].gram
        total += sum(float(np.einsum("ok,kl,ol->", d[i], g[i], d[i])) for i in range(g.shape[0]))
    return total


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
@pytest.mark.parametrize("nm", [None, (2, 4)], ids=["50%", "2:4"])
def test_reconstruction_error_below_magnitude_and_wanda(name: str, nm: tuple[int, int] | None) -> None:
    model = load_model(MODELS / f"{name}.onnx")
    calib = MODELS / f"{name}_calib.npz"
    stats = collect_stats(model, calib, gram_for=[pw.readers[0] for pw in find_prunable_weights(model)])

    def prune(scores=None) -> onnx.ModelProto:
        if nm is None:
            return sparsify(model, sparsity=0.5, scores=scores).model
        return sparsify_nm(model, n=nm[0], m=nm[1], scores=scores).model

    magnitude = _reconstruction_error(model, prune(), stats)
    wanda = _reconstruction_error(model, prune(sparse_scores(model, calib, criterion="wanda")), stats)
    gpt = _reconstruction_error(model, sparsify_calibrated(model, calib, criterion="sparsegpt", sparsity=0.5,
                                                           nm=nm).model, stats)
    assert gpt < 0.5 * wanda and gpt < 0.5 * magnitude, (gpt, wanda, magnitude)


# -- the command line --------------------------------------------------------------------------------
def test_missing_calib_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.onnx"
    code = main(["prune", str(MODELS / "digits_mlp.onnx"), "-o", str(out), "--mode", "unstructured",
                 "--sparsity", "0.5", "--importance", "sparsegpt"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and "pass --calib data.npz" in err and "sparsegpt" in err
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, match", [
    (["--mode", "unstructured", "--scope", "global"], "use --scope layer"),
    (["--mode", "structured", "--ratio", "0.3"], "does not apply to --mode structured"),
])
def test_sparsegpt_refuses_what_it_cannot_do(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                             match: str) -> None:
    out = tmp_path / "out.onnx"
    code = main(["prune", str(MODELS / "digits_mlp.onnx"), "-o", str(out), "--importance", "sparsegpt",
                 "--calib", str(MODELS / "digits_mlp_calib.npz"), *args])
    assert code == 1 and match in capsys.readouterr().err and not out.exists()


def test_cli_sparsegpt_2_4_prunes_and_reports(tmp_path: Path) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code = main(["prune", str(MODELS / "digits_mlp.onnx"), "-o", str(out), "--mode", "nm", "--importance",
                 "sparsegpt", "--calib", str(MODELS / "digits_mlp_calib.npz"), "--report", str(report), "--quiet"])
    assert code == 0
    import json

    data = json.loads(report.read_text())
    extra = data.get("sparsity") or data
    assert "sparsegpt" in str(data) and extra
    model = load_model(out)
    for pw in find_prunable_weights(model):
        w = get_weight(model, pw)
        assert np.all(_groups_along(w, pw.reduction_axes, 4) >= 2)
