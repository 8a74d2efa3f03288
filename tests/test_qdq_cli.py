"""End to end on a QDQ model, as a user runs it: every mode with no extra flag keeps the model quantized."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from onnx import TensorProto
from oracle_check import run_ort, seeded_feeds
from qdq_models import quantize_qdq

from onnxprune.cli.main import main
from onnxprune.core.stats import count_params


def _summary(model: onnx.ModelProto) -> tuple[Counter, dict[str, int]]:
    ops = Counter(n.op_type for n in model.graph.node)
    return ops, {t.name: t.data_type for t in model.graph.initializer}


@pytest.mark.parametrize("mode", [["--mode", "structured", "--ratio", "0.3", "--round-to", "1"],
                                  ["--mode", "unstructured", "--sparsity", "0.5"],
                                  ["--mode", "nm", "--nm", "2:4"]])
def test_every_mode_keeps_a_qdq_model_quantized(tmp_path: Path, mode: list[str]) -> None:
    src = quantize_qdq(builders.conv_relu_conv(batch=1, c_mid=16), tmp_path)
    out = tmp_path / "out.onnx"
    assert main(["prune", str(src), "-o", str(out), "--quiet", *mode]) == 0
    original, pruned = onnx.load(src), onnx.load(out)
    assert _summary(pruned)[0] == _summary(original)[0]  # same ops: every Q/DQ pair, nothing folded
    types = _summary(pruned)[1]
    assert types == _summary(original)[1]
    assert types["w1_quantized"] == TensorProto.INT8
    assert out.stat().st_size <= src.stat().st_size
    if mode[1] == "structured":
        assert count_params(pruned) < count_params(original)  # it really pruned (it used to prune nothing)
    else:
        assert count_params(pruned, nonzero=True) < count_params(original, nonzero=True)
    feeds = seeded_feeds(original)
    assert [o.shape for o in run_ort(pruned, feeds)] == [o.shape for o in run_ort(original, feeds)]


def test_recovery_refuses_a_quantized_model_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = quantize_qdq(builders.conv_relu_conv(batch=1, c_mid=16), tmp_path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((8, 4, 9, 9)).astype(np.float32))
    out = tmp_path / "out.onnx"
    before = src.read_bytes()
    code = main(["prune", str(src), "-o", str(out), "--mode", "structured", "--ratio", "0.3", "--calib", str(calib)])
    err = [line for line in capsys.readouterr().err.splitlines() if "WARNING" not in line]
    assert code == 1 and len(err) == 1 and "quantized" in err[0] and "--recover none" in err[0], err
    assert not out.exists() and src.read_bytes() == before
