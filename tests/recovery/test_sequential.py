"""Sequential calibration: stages by depth, statistics from the already-pruned model, the dense target through
the cross term, and better final outputs than one shot on a multi-layer model."""

from __future__ import annotations

from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from builders import init, make_model, vinfo
from onnx import helper

from onnxprune.cli.main import main
from onnxprune.core.errors import ConfigError
from onnxprune.core.io import load_model
from onnxprune.core.weights import find_prunable_weights, get_weight
from onnxprune.recovery.calibrate import collect_paired_grams, collect_stats
from onnxprune.recovery.sequential import layer_stages, sparsify_calibrated
from onnxprune.recovery.solvers import masked_refit
from onnxprune.runtime.feeds import load_npz_feeds
from onnxprune.runtime.session import create_session, run_session

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_stages_follow_depth_and_parallel_layers_share_one() -> None:
    assert layer_stages(load_model(MODELS / "digits_mlp.onnx")) == {"coefficient": 0, "coefficient1": 1,
                                                                    "coefficient2": 2}
    # two heads read the same hidden layer: one stage for both
    stages = layer_stages(builders.two_heads())
    assert sorted(stages.values()) == [0, 1, 1]
    transformer = layer_stages(load_model(MODELS / "digits_transformer.onnx"))
    assert max(transformer.values()) + 1 == 10  # embed, (qkv, out, ffn1, ffn2) x 2, head


def _two_layer(seed: int = 0) -> onnx.ModelProto:
    r = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("MatMul", ["hr", "w2"], ["y"], name="fc2")]
    inits = [init("w1", r.standard_normal((12, 16)).astype(np.float32)),
             init("w2", r.standard_normal((16, 8)).astype(np.float32))]
    return make_model(nodes, [vinfo("x", ["N", 12])], [vinfo("y", ["N", 8])], inits)


def _x(n: int = 200, seed: int = 1) -> np.ndarray:
    r = np.random.default_rng(seed)
    return (r.standard_normal((n, 12)) @ r.standard_normal((12, 12))).astype(np.float32)


def test_paired_grams_of_a_model_with_itself_are_its_grams_and_cross_is_the_other_input() -> None:
    model = _two_layer()
    feeds = [{"x": _x()}]
    paired = collect_paired_grams(model, model, feeds, layers=["fc1", "fc2"])
    plain = collect_stats(model, feeds, gram_for=["fc1", "fc2"])
    for key in ("fc1", "fc2"):
        np.testing.assert_allclose(paired.grams[key].gram, plain.grams[key].gram)
        np.testing.assert_allclose(paired.grams[key].cross, plain.grams[key].gram)
    # against another model: cross = X̃ᵀX of the two inputs of fc2
    other = _two_layer(seed=5)
    got = collect_paired_grams(other, model, feeds, layers=["fc2"]).grams["fc2"].cross[0]
    h_model = np.maximum(feeds[0]["x"].astype(np.float64) @ numpy_w(model, "w1"), 0)
    h_other = np.maximum(feeds[0]["x"].astype(np.float64) @ numpy_w(other, "w1"), 0)
    np.testing.assert_allclose(got, h_model.T @ h_other, rtol=1e-4)


def numpy_w(model: onnx.ModelProto, name: str) -> np.ndarray:
    return get_weight(model, next(p for p in find_prunable_weights(model) if p.name == name)).astype(np.float64)


def test_masked_refit_with_cross_fits_the_other_input() -> None:
    r = np.random.default_rng(0)
    x = r.standard_normal((300, 6))
    x_new = x + 0.3 * r.standard_normal((300, 6))  # what the layer sees now
    w = r.standard_normal((3, 6))
    mask = r.random((3, 6)) > 0.4
    got = masked_refit(w, mask, x_new.T @ x_new, cross=x_new.T @ x, ridge=0.0)
    for o in range(3):  # each row: least squares of X w_o on the kept columns of X̃
        s = np.flatnonzero(mask[o])
        expect = np.linalg.lstsq(x_new[:, s], x @ w[o], rcond=None)[0]
        np.testing.assert_allclose(got[o, s], expect, rtol=1e-8)
        assert np.all(got[o, ~mask[o]] == 0)


def _logits(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = create_session(model)
    name = next(o.name for o in session.get_outputs() if "float" in o.type)
    return run_session(session, feeds)[name]


@pytest.mark.parametrize("criterion, refit", [("sparsegpt", False), ("wanda", True)])
def test_sequential_differs_from_one_shot_and_is_no_worse_on_the_transformer(criterion: str, refit: bool) -> None:
    model = load_model(MODELS / "digits_transformer.onnx")
    calib = MODELS / "digits_transformer_calib.npz"
    feeds = load_npz_feeds(MODELS / "digits_transformer_test.npz", model)
    dense = _logits(model, feeds)
    one = sparsify_calibrated(model, calib, criterion=criterion, nm=(2, 4), refit=refit)
    seq = sparsify_calibrated(model, calib, criterion=criterion, nm=(2, 4), refit=refit, sequential=True)
    assert one.info["calibration"]["passes"] == 1 and seq.info["calibration"]["passes"] == 10
    later = find_prunable_weights(model)[-1]
    assert not np.array_equal(get_weight(one.model, later), get_weight(seq.model, later))
    err_one = float(np.mean((_logits(one.model, feeds) - dense) ** 2))
    err_seq = float(np.mean((_logits(seq.model, feeds) - dense) ** 2))
    assert err_seq <= err_one, (err_seq, err_one)
    for layer in seq.result.layers:  # still exactly 2:4 on every layer
        assert layer.zeros_after == layer.numel // 2


def test_sequential_keeps_the_exact_count_and_reports_each_layer_once() -> None:
    model = load_model(MODELS / "digits_mlp.onnx")
    out = sparsify_calibrated(model, MODELS / "digits_mlp_calib.npz", criterion="wanda", sparsity=0.3,
                              sequential=True, exclude=["coefficient2"])
    assert [r.name for r in out.result.layers] == ["coefficient", "coefficient1"]
    assert [s.name for s in out.result.skipped] == ["coefficient2"]
    # the last stage has nothing to prune: no calibration pass for it
    assert out.info["calibration"]["stages"] == 3 and out.info["calibration"]["passes"] == 2
    for layer in out.result.layers:
        assert layer.zeros_after == round(0.3 * layer.numel)


def test_sequential_refuses_a_one_shot_iterator_and_a_global_scope() -> None:
    model = _two_layer()
    with pytest.raises(ConfigError, match="once per stage"):
        sparsify_calibrated(model, iter([{"x": _x()}]), criterion="sparsegpt", sequential=True)
    with pytest.raises(ConfigError, match="scope layer"):
        sparsify_calibrated(model, [{"x": _x()}], criterion="wanda", scope="global", sequential=True)


@pytest.mark.parametrize("args, match", [
    (["--mode", "unstructured", "--importance", "wanda"], "--sequential applies only with --calib"),
    (["--mode", "nm", "--calib", "CALIB"], "add --importance sparsegpt"),
    (["--mode", "unstructured", "--importance", "wanda", "--scope", "global", "--calib", "CALIB"], "--scope layer"),
])
def test_cli_sequential_refusals_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                              match: str) -> None:
    out = tmp_path / "out.onnx"
    args = [str(MODELS / "digits_mlp_calib.npz") if a == "CALIB" else a for a in args]
    code = main(["prune", str(MODELS / "digits_mlp.onnx"), "-o", str(out), "--sequential", *args])
    err = capsys.readouterr().err.strip()
    assert code == 1 and match in err and len(err.splitlines()) == 1 and not out.exists()


def test_cli_sequential_sparsegpt_reports_its_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code = main(["prune", str(MODELS / "digits_mlp.onnx"), "-o", str(out), "--mode", "unstructured",
                 "--sparsity", "0.5", "--importance", "sparsegpt", "--sequential", "--recover", "lstsq",
                 "--calib", str(MODELS / "digits_mlp_calib.npz"), "--report", str(report)])
    assert code == 0
    assert "calibration           sequential, 3 pass(es) over --calib" in capsys.readouterr().out
    text = json.loads(report.read_text())
    found = json.dumps(text)
    assert '"passes": 3' in found and '"sequential": true' in found
