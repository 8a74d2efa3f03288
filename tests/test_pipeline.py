"""The prune pipeline end to end through the CLI: reports, proofs, plans, sparse storage, eval, bench."""

from __future__ import annotations

import json
from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.cli.main import main
from onnxprune.core.io import save_model
from onnxprune.runtime.session import create_session, run_session

REPORT_KEYS = {"mode", "params_before", "params_after", "macs_before", "macs_after", "file_size_before",
               "file_size_after", "seconds", "validation", "warnings"}


@pytest.fixture()
def cnn(tmp_path: Path) -> Path:
    path = tmp_path / "cnn.onnx"
    save_model(builders.conv_bn_relu(seed=3, c_mid=16), path)
    return path


@pytest.fixture()
def mlp(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    save_model(builders.mlp(seed=4), path)
    return path


def _prune(args: list[str], report: Path) -> dict:
    assert main(["prune", *args, "--report", str(report), "--quiet"]) == 0
    return json.loads(report.read_text())


def test_structured_report_and_proof(cnn: Path, tmp_path: Path) -> None:
    out, plan = tmp_path / "out.onnx", tmp_path / "plan.json"
    r = _prune([str(cnn), "-o", str(out), "--ratio", "0.5", "--plan-out", str(plan)], tmp_path / "r.json")
    assert REPORT_KEYS <= set(r) and {"groups", "blocked", "coverage"} <= set(r)
    assert r["mode"] == "structured"
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    # The parameter count drops by exactly what the dependency graph predicted.
    assert r["params_before"] - r["params_after"] == r["params_removed"] > 0
    assert r["macs_after"] < r["macs_before"]
    assert r["file_size_after"] == out.stat().st_size < r["file_size_before"]
    g = next(g for g in r["groups"] if g["size_before"] == 16)
    assert g["size_after"] == 8
    assert r["validation"]["exact"]["passed"] and r["validation"]["exact"]["comparisons"]["cpu"]["within_tolerance"]
    # The same plan, applied again, gives a byte-identical model.
    out2 = tmp_path / "out2.onnx"
    _prune([str(cnn), "-o", str(out2), "--plan-in", str(plan)], tmp_path / "r2.json")
    assert out2.read_bytes() == out.read_bytes()


def test_plan_for_another_model_is_refused(cnn: Path, mlp: Path, tmp_path: Path, capsys) -> None:
    plan = tmp_path / "plan.json"
    assert main(["prune", str(mlp), "-o", str(tmp_path / "m.onnx"), "--plan-out", str(plan), "-q"]) == 0
    capsys.readouterr()
    out = tmp_path / "c.onnx"
    assert main(["prune", str(cnn), "-o", str(out), "--plan-in", str(plan)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another model" in err[0]
    assert not out.exists()


def test_unstructured_report_exact_sparsity_and_untouched_survivors(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    r = _prune([str(mlp), "-o", str(out), "--mode", "unstructured", "--sparsity", "0.75"], tmp_path / "r.json")
    assert REPORT_KEYS <= set(r) and {"sparsity", "skipped"} <= set(r)
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(mlp)).graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    for name in ("fc1_w", "fc2_w"):
        zeros = after[name] == 0
        assert abs(zeros.sum() - round(0.75 * zeros.size)) <= 1
        np.testing.assert_array_equal(after[name][~zeros], before[name][~zeros])
    for name in ("fc1_b", "fc2_b"):  # biases are never pruned
        np.testing.assert_array_equal(after[name], before[name])
    assert r["params_after"] == r["params_before"] - int(round(0.75 * 32 * 16)) - int(round(0.75 * 32 * 10))
    assert r["sparsity"]["overall"] == pytest.approx(0.75, abs=1 / 512)
    assert r["macs_after"] == r["macs_before"]  # zeros do not remove MACs: the report says so


def test_nm_and_sparse_storage_round_trip(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "nm.onnx"
    _prune([str(mlp), "-o", str(out), "--mode", "nm", "--nm", "1:4"], tmp_path / "r.json")
    w = numpy_helper.to_array(next(t for t in onnx.load(str(out)).graph.initializer if t.name == "fc1_w"))
    assert (np.count_nonzero(w.reshape(32, 4, 4), axis=2) <= 1).all()  # Gemm transB=1: K is axis 1

    sparse = tmp_path / "sparse.onnx"
    r = _prune([str(mlp), "-o", str(sparse), "--mode", "unstructured", "--sparsity", "0.9", "--sparse-storage"],
               tmp_path / "r2.json")
    assert len(onnx.load(str(sparse)).graph.sparse_initializer) >= 1
    assert r["file_size_after"] < r["file_size_before"]
    assert r["validation"]["sparse_storage"]["within_tolerance"]
    dense = tmp_path / "dense.onnx"
    _prune([str(mlp), "-o", str(dense), "--mode", "unstructured", "--sparsity", "0.9"], tmp_path / "r3.json")
    x = {"x": np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)}
    a = run_session(create_session(str(dense)), x)
    b = run_session(create_session(str(sparse)), x)
    np.testing.assert_array_equal(a["out"], b["out"])


def test_eval_data_reports_accuracy_before_and_after(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent / "models"
    r = _prune([str(root / "digits_mlp.onnx"), "-o", str(tmp_path / "o.onnx"), "--mode", "unstructured",
                "--sparsity", "0.3", "--eval-data", str(root / "digits_mlp_test.npz")], tmp_path / "r.json")
    assert r["accuracy"]["before"]["n"] == 360
    assert 0.9 < r["accuracy"]["before"]["top1"] <= 1.0
    assert 0.0 <= r["accuracy"]["after"]["top1"] <= 1.0


def test_exclude_protects_a_layer_and_unmatched_pattern_warns(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    r = _prune([str(mlp), "-o", str(out), "--mode", "unstructured", "--exclude", "fc1*", "--exclude", "nothing*"],
               tmp_path / "r.json")
    w = numpy_helper.to_array(next(t for t in onnx.load(str(out)).graph.initializer if t.name == "fc1_w"))
    assert np.count_nonzero(w) == w.size
    assert any("nothing*" in w for w in r["warnings"])


def test_markdown_report_and_bench(cnn: Path, tmp_path: Path) -> None:
    md = tmp_path / "r.md"
    r = _prune([str(cnn), "-o", str(tmp_path / "o.onnx"), "--bench", "--batch", "1", "--runs", "3",
                "--warmup", "1", "--report-md", str(md)], tmp_path / "r.json")
    assert "bench" in r
    text = md.read_text()
    assert "Validation" in text or "validation" in text


def test_odd_widths_warn_and_round_to_silences_it(cnn: Path, tmp_path: Path) -> None:
    r = _prune([str(cnn), "-o", str(tmp_path / "a.onnx"), "--ratio", "0.3", "--round-to", "1"], tmp_path / "a.json")
    assert any("--round-to 8" in w for w in r["warnings"])  # 16 channels at 0.3 leave 11
    r = _prune([str(cnn), "-o", str(tmp_path / "b.onnx"), "--ratio", "0.3", "--round-to", "8"], tmp_path / "b.json")
    assert not any("--round-to" in w for w in r["warnings"])
    assert all(g["size_after"] % 8 == 0 for g in r["groups"])


@pytest.mark.parametrize("option", ["--report", "--report-md", "--plot"])
def test_bad_report_path_fails_before_any_model_is_written(cnn: Path, tmp_path: Path, option: str, capsys) -> None:
    out = tmp_path / "o.onnx"
    bad = tmp_path / "missing-folder" / "r.out"
    assert main(["prune", str(cnn), "-o", str(out), option, str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing-folder" in err[0] and "does not exist" in err[0]
    assert not out.exists()


def test_report_path_equal_to_output_is_refused(cnn: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.onnx"
    assert main(["prune", str(cnn), "-o", str(out), "--report", str(out)]) == 1
    assert "is the output model path" in capsys.readouterr().err
    assert not out.exists()


def test_bn_scale_without_batchnorm_says_which_criterion_it_used(mlp: Path, tmp_path: Path) -> None:
    r = _prune([str(mlp), "-o", str(tmp_path / "o.onnx"), "--importance", "bn_scale"], tmp_path / "r.json")
    assert any("no BatchNormalization: l2" in w for w in r["warnings"])
    assert all(g["criterion"] == "bn_scale (no BatchNormalization: l2)" for g in r["groups"])


def test_mac_budget_holds_with_round_to(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent / "models"
    r = _prune([str(root / "digits_cnn.onnx"), "-o", str(tmp_path / "o.onnx"), "--target-macs", "0.5",
                "--round-to", "8", "--calib", str(root / "digits_cnn_calib.npz")], tmp_path / "r.json")
    assert r["macs_after"] <= 0.5 * r["macs_before"]
    assert all(g["size_after"] % 8 == 0 for g in r["groups"])
