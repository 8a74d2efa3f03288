"""Models with dynamic input axes, as real exporters write them, prune in every mode with no extra flag.

Text models (``input_ids[batch, sequence]``), audio models (``input_values[batch, sequence]`` into a wide
Conv1d), Paddle-style exports (``-1``, ``?`` and unnamed dims), symbolic
``[N, C, H, W]`` and fp16 conversions: each mode gives a checker-valid model whose declared inputs and
outputs are exactly the original's, that onnxruntime runs with the original's output shapes, and whose
report and summary name the sizes onnxprune chose.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import (
    audio_encoder,
    fp16_classifier,
    paddle_classifier,
    residual_free_cnn,
    symbolic_inputs,
    text_classifier,
)

import onnxprune as op
from onnxprune.cli.main import main
from onnxprune.runtime.dims import resolve_dims
from onnxprune.runtime.feeds import random_feeds
from onnxprune.runtime.validate import validate_models
from onnxprune.structured.analysis import analyze
from onnxprune.structured.oracle import zeroed_reference

MODELS = Path(__file__).resolve().parent.parent / "models"
MODES = ("structured", "unstructured", "nm")

BUILDERS = {
    "text": text_classifier,
    "audio": audio_encoder,
    "paddle": paddle_classifier,
    "symbolic_nchw": lambda: symbolic_inputs(residual_free_cnn()),
    "fp16": fp16_classifier,
}
#: What each model's report must say it assumed: {label: value} (batch axes included).
ASSUMED = {
    "text": {"input_ids:0": 1, "input_ids:1": 32, "attention_mask:0": 1, "attention_mask:1": 32},
    "audio": {"input_values:0": 1, "input_values:1": 128},
    "paddle": {"x:0": 1, "x:2": 224, "x:3": 224},
    "symbolic_nchw": {"x:0": 1, "x:1": 3, "x:2": 224, "x:3": 224},
    "fp16": {"x:0": 1},
}


def _ort(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 1  # warnings too: a declared shape that contradicts the run is one
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _io(model: onnx.ModelProto) -> list[bytes]:
    inits = {t.name for t in model.graph.initializer}
    return [vi.SerializeToString() for vi in (*model.graph.input, *model.graph.output) if vi.name not in inits]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_every_mode_prunes_a_dynamic_model_with_no_flag(kind: str, mode: str, capfd: pytest.CaptureFixture[str]):
    original = BUILDERS[kind]()
    result = op.prune(original, op.PruneConfig(mode=mode))
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    assert _io(pruned) == _io(original)  # declared shapes survive exactly: names, -1, unnamed dims
    got = {(e["input"], e["axis"]): e["value"] for e in result.report["dims_assumed"]}
    assert {f"{i}:{a}": v for (i, a), v in got.items()} == ASSUMED[kind]
    assert result.report["macs_before"] > 0 and result.report["macs_after"] > 0
    if mode == "structured":
        assert result.report["validation"]["exact"]["passed"]
        assert result.report["params_after"] < result.report["params_before"]
    else:
        assert result.report["sparsity"]["overall"] > 0.2
    # onnxruntime runs the pruned model at batch 2 with the original's output shapes, and no declared
    # shape contradicts the run (fp16 conversions used to pin the output's batch to 1)
    dims = resolve_dims(original).dims
    feeds = random_feeds(original, seed=1, batch=2, dims=dims)
    capfd.readouterr()
    want = [o.shape for o in _ort(original).run(None, feeds)]
    got_out = [o.shape for o in _ort(pruned).run(None, feeds)]
    assert got_out == want and want[0][0] == 2
    assert "does not match" not in capfd.readouterr().err


@pytest.mark.parametrize("kind", ["text", "paddle"])
def test_structured_cut_equals_the_zeroed_original_at_the_chosen_sizes(kind: str):
    """The exactness oracle, run here directly: pruned == original with the dropped channels silenced."""
    original = BUILDERS[kind]()
    dims = resolve_dims(original).dims
    result = op.prune(original, op.PruneConfig(ratio=0.5, validate=False))
    reference = zeroed_reference(original, analyze(original, dims=dims), result.plan)
    for seed in range(3):
        feeds = random_feeds(original, seed=seed, batch=2, dims=dims)
        for a, b in zip(_ort(result.model).run(None, feeds), _ort(reference).run(None, feeds), strict=True):
            assert np.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert result.plan.channels_removed > 0


def test_fp16_structured_keeps_dynamic_value_info():
    """Issue: value_info re-inferred at batch 1 made onnxruntime expect {1, 10} for a batch-2 output."""
    original = fp16_classifier()
    pruned = op.prune(original, op.PruneConfig(validate=False)).model
    before = {vi.name: vi.type.tensor_type.shape.dim[0] for vi in original.graph.value_info}
    after = {vi.name: vi.type.tensor_type.shape.dim[0] for vi in pruned.graph.value_info}
    assert set(after) == set(before) and len(after) > 4
    assert all(d.dim_param == "batch" for d in after.values())
    assert all(vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for vi in pruned.graph.value_info)


def test_paddle_model_validates_instead_of_index_error():
    """Issue: a -1 batch dim made validation build zero batches (internal error: IndexError)."""
    model = paddle_classifier()
    report = validate_models(model, model)
    assert report and report.samples == 4
    assert report.comparison("cpu").output("out").shape == (1, 5)
    assert report.inputs == "random seed=0 x:2=224 x:3=224"


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def test_cli_reports_and_prints_the_sizes_it_assumed(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    src = _save(text_classifier(), tmp_path / "text.onnx")
    report = tmp_path / "r.json"
    assert main(["prune", str(src), "-o", str(tmp_path / "p.onnx"), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "  input dims            sequence=32 (assumed; set with --dim)\n" in out
    entries = json.loads(report.read_text())["dims_assumed"]
    assert {(e["input"], e["axis"], e["value"], e["source"]) for e in entries} == {
        ("input_ids", 0, 1, "batch"), ("input_ids", 1, 32, "candidate"),
        ("attention_mask", 0, 1, "batch"), ("attention_mask", 1, 32, "candidate")}


@pytest.mark.parametrize("mode", MODES)
def test_cli_dim_by_input_and_axis(tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str):
    src = _save(text_classifier(), tmp_path / "text.onnx")
    report = tmp_path / "r.json"
    assert main(["prune", str(src), "-o", str(tmp_path / "p.onnx"), "--mode", mode, "--dim", "input_ids:1=16",
                 "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "input dims" not in out  # nothing assumed but the batch
    data = json.loads(report.read_text())
    assert [e["source"] for e in data["dims_assumed"]] == ["batch", "batch"]
    assert data["validation"]["drift"]["inputs"] == "random seed=0 sequence=16"
    # MACs at sequence 16 are half those at the default 32 (every weighted op is per token)
    default = op.prune(text_classifier(), op.PruneConfig(mode=mode, validate=False)).report["macs_before"]
    assert data["macs_before"] * 2 == default


def test_cli_dim_addresses_question_mark_axes(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    src = _save(paddle_classifier(), tmp_path / "paddle.onnx")
    report = tmp_path / "r.json"
    assert main(["prune", str(src), "-o", str(tmp_path / "p.onnx"), "--dim", "x:2=16", "--dim", "x:3=20",
                 "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["validation"]["exact"]["passed"]
    assert data["validation"]["drift"]["inputs"] == "random seed=0 x:2=16 x:3=20"
    assert "input dims" not in capsys.readouterr().out


def test_analyze_states_assumed_sizes_and_never_counts_at_1x1(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """Issue: digits_cnn with [N, C, H, W] symbolic printed 74,656 MACs (H = W = 1) without a word."""
    src = _save(symbolic_inputs(onnx.load(str(MODELS / "digits_cnn.onnx"))), tmp_path / "sym.onnx")
    assert main(["analyze", str(src)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("MACs"))
    assert line == ("MACs       1,632,928,384 (batch 1, at C=1 (from weights), H=224, W=224 "
                    "(assumed; set with --dim))")
    assert main(["analyze", str(src), "--dim", "H=8", "--dim", "W=8"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("MACs"))
    assert line == "MACs       2,083,456 (batch 1, at C=1 (from weights) (assumed; set with --dim))"


def test_analyze_paddle_model_has_no_negative_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    src = _save(paddle_classifier(), tmp_path / "paddle.onnx")
    assert main(["analyze", str(src), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["macs"] > 0 and all(v >= 0 for v in summary["macs_by_node"].values())
    assert summary["inputs"][0]["shape"] == ["?", 3, "?", "?"]
    assert [(e["axis"], e["value"]) for e in summary["dims_assumed"]] == [(0, 1), (2, 224), (3, 224)]


@pytest.mark.parametrize("mode", ["unstructured", "nm"])
def test_zeroing_weights_needs_no_sizes_without_validation(mode: str):
    """Flatten -> Gemm accepts H = W = 3 only, which no candidate is: validation refuses, --no-validate
    prunes, keeps MACs at the unconfirmed sizes and says so."""
    from builders import flatten_gemm

    model = flatten_gemm()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    with pytest.raises(op.ConfigError, match=r"--dim x:2=VALUE"):
        op.prune(model, op.PruneConfig(mode=mode))
    result = op.prune(model, op.PruneConfig(mode=mode, validate=False))
    assert result.report["sparsity"]["overall"] > 0.2
    assert any("did not run in onnxruntime" in w for w in result.warnings)
    assert all(e.get("confirmed") is False for e in result.report["dims_assumed"] if e["source"] == "candidate")
