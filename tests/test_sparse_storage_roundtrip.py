"""Every command reads every model onnxprune writes: ``prune --sparse-storage`` output included.

Issue: such a file failed ``validate`` (the full checker types a sparse initializer as ``sparse_tensor``),
was under-counted by ``analyze`` and ``bench`` (38,698 params and 1.49 M MACs instead of 75,562 and 2.08 M)
and failed the exactness check when pruned again. Sparse initializers now count as the dense tensors they
stand for.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.cli.main import main
from onnxprune.core.io import load_model

MODELS = Path(__file__).resolve().parent.parent / "models"
CNN = MODELS / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The digits CNN at 90 % unstructured sparsity, saved dense and with sparse storage."""
    folder = tmp_path_factory.mktemp("sparse")
    dense, sparse = folder / "dense.onnx", folder / "sparse.onnx"
    common = ["prune", str(CNN), "--mode", "unstructured", "--sparsity", "0.9", "-q", "--no-validate"]
    assert main([*common, "-o", str(dense)]) == 0
    assert main([*common, "-o", str(sparse), "--sparse-storage"]) == 0
    stored = onnx.load(str(sparse))
    assert len(stored.graph.sparse_initializer) >= 1  # the case under test really is sparse storage
    return dense, sparse


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_load_model_densifies_bit_exactly(pruned: tuple[Path, Path]) -> None:
    dense, sparse = (load_model(p) for p in pruned)
    assert len(sparse.graph.sparse_initializer) == 0
    want = {t.name: numpy_helper.to_array(t) for t in dense.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in sparse.graph.initializer}
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].tobytes() == value.tobytes(), name


def test_validate_reads_sparse_storage(pruned: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    dense, sparse = pruned
    report = _json(["validate", str(dense), str(sparse), "--json"], capsys)
    checks = {c["name"]: c["passed"] for c in report["checks"]}
    assert checks["checker"] and checks["shape_inference"], report["checks"]
    assert report["passed"]


def test_analyze_and_bench_count_sparse_weights_as_dense(pruned: tuple[Path, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    dense, sparse = pruned
    a_dense = _json(["analyze", str(dense), "--json"], capsys)
    a_sparse = _json(["analyze", str(sparse), "--json"], capsys)
    assert (a_sparse["params"], a_sparse["macs"]) == (a_dense["params"], a_dense["macs"]) == (75_562, 2_083_456)
    assert len(a_sparse["prunable_weights"]) == len(a_dense["prunable_weights"])
    bench = _json(["bench", str(dense), str(sparse), "--runs", "2", "--warmup", "0", "--json"], capsys)
    counts = [(m["params"], m["macs"]) for m in bench["models"]]
    assert counts == [(75_562, 2_083_456)] * 2


@pytest.mark.parametrize("mode", ["structured", "unstructured"])
def test_sparse_storage_output_can_be_pruned_again(pruned: tuple[Path, Path], tmp_path: Path, mode: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _, sparse = pruned
    out, report = tmp_path / "again.onnx", tmp_path / "again.json"
    extra = ["--sparsity", "0.95"] if mode == "unstructured" else ["--ratio", "0.3"]
    assert main(["prune", str(sparse), "-o", str(out), "--mode", mode, *extra, "-q",
                 "--report", str(report)]) == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    if mode == "structured":
        assert data["validation"]["exact"]["passed"]
        assert data["params_before"] == 75_562 and data["params_after"] < 75_562
    else:  # the zeros of the first pass are seen: 95 % of the dense count stays zero
        assert data["sparsity"]["overall"] == pytest.approx(0.95, abs=0.01)
    weights = [numpy_helper.to_array(t) for t in load_model(out).graph.initializer]
    assert all(np.isfinite(w).all() for w in weights if w.dtype.kind == "f")
