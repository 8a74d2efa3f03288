"""``--mode width`` on a QDQ model treats it as structured mode does: the int8 weights are cut in place.

The re-fit computes float weights, so it is refused with one line naming ``--recover none`` (before, it
silently fitted nothing); rotation cannot keep integer weights exact, so the stream is pruned plainly, and
the report says why. The model is a ViT block whose shared bias onnxruntime quantized (see
``tests/structured/test_qdq_shared_constants.py``): its stream is ``VIT_D`` channels, not ``VIT_HEADS``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from qdq_models import VIT_C_IN, VIT_D, VIT_T, quantize_qdq, shared_bias_vit

from onnxprune.cli.main import main
from onnxprune.core.errors import ConfigError
from onnxprune.recovery.width import prune_width


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).standard_normal((16, VIT_C_IN, VIT_T)).astype(np.float32))
    return quantize_qdq(shared_bias_vit(), tmp_path), calib


def test_width_refit_of_a_quantized_model_is_refused_in_one_line(files: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model, calib = files
    before = model.read_bytes()
    out = tmp_path / "out.onnx"
    rc = main(["prune", str(model), "-o", str(out), "--mode", "width", "--ratio", "0.25", "--calib", str(calib)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and not out.exists() and model.read_bytes() == before
    assert "quantized" in err and "--recover none" in err and "\n" not in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="--recover none"):  # the API says the same
        prune_width(onnx.load(model), ratio=0.25, calib=str(calib))


def test_width_without_refit_cuts_the_int8_stream_plainly(files: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = files
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    assert main(["prune", str(model), "-o", str(out), "--mode", "width", "--ratio", "0.25", "--calib", str(calib),
                 "--recover", "none", "--report", str(report), "-q"]) == 0
    width = json.loads(report.read_text())["width"]
    assert width["method"] == "plain" and "quantized" in width["why_not_rotated"]
    assert [(s["width_before"], s["width_after"]) for s in width["streams"]] == [(VIT_D, VIT_D * 3 // 4)]
    assert width["rewrite_check"]["passed"] is True and width["refit"] == []
    src, pruned = onnx.load(model), onnx.load(out)
    ops = Counter(n.op_type for n in pruned.graph.node)
    assert ops["QuantizeLinear"] == Counter(n.op_type for n in src.graph.node)["QuantizeLinear"]
    int8 = {t.name: list(t.dims) for t in pruned.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    assert len(int8) == len([t for t in src.graph.initializer if t.data_type == onnx.TensorProto.INT8])
    matmul_weights = [d for d in int8.values() if len(d) == 2 and VIT_D * 3 // 4 in d]
    assert sorted(matmul_weights) == [[5, 12], [12, 16], [12, 16], [12, 16], [16, 12]]  # q, k, v, head read; o writes
