"""Width pruning of the residual stream: shapes, exact parameter drop, re-fit vs no re-fit, refusal."""

from __future__ import annotations

from pathlib import Path

import builders
import numpy as np
import onnx
import pytest

from onnxprune.cli.main import main
from onnxprune.core.stats import model_stats
from onnxprune.recovery.width import prune_width
from onnxprune.runtime.session import create_session, run_session

MODELS = Path(__file__).resolve().parents[2] / "models"
DIGITS = MODELS / "digits_transformer.onnx"
CALIB = MODELS / "digits_transformer_calib.npz"
TEST = MODELS / "digits_transformer_test.npz"


def _check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def _logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return run_session(create_session(model), {model.graph.input[0].name: x})[model.graph.output[0].name]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def digits() -> tuple[onnx.ModelProto, dict[bool, object]]:
    model = onnx.load(DIGITS)
    return model, {refit: prune_width(model, ratio=0.25, calib=str(CALIB), refit=refit) for refit in (False, True)}


def test_digits_width_shapes_and_params(digits) -> None:
    model, results = digits
    for result in results.values():
        _check(result.model)
        report = result.report
        assert report["exact"] is False
        assert report["streams"] == [{"group": report["streams"][0]["group"], "width_before": 64, "width_after": 48}]
        removed = model_stats(model).params - model_stats(result.model).params
        assert removed == report["params_removed_predicted"] > 0
        ln = [n for n in result.model.graph.node if n.op_type == "LayerNormalization"]
        inits = {t.name: t for t in result.model.graph.initializer}
        assert all(list(inits[n.input[1]].dims) == [48] for n in ln)
    x = np.load(TEST)["tokens"][:5]
    assert _logits(results[True].model, x).shape == (5, 10)  # the batch axis stays dynamic


def test_refit_improves_drift_and_accuracy(digits) -> None:
    model, results = digits
    data = np.load(TEST)
    x, labels = data["tokens"], data["labels"]
    ref = _logits(model, x)
    cos = {k: _cosine(ref, _logits(r.model, x)) for k, r in results.items()}
    top1 = {k: float((_logits(r.model, x).argmax(1) == labels).mean()) for k, r in results.items()}
    assert cos[True] > cos[False] + 0.05, cos
    assert top1[True] > top1[False], top1
    assert all(f["rel_error_after"] < f["rel_error_before"] for f in results[True].report["refit"])


def test_convnext_every_stage_stream_cut(tmp_path: Path) -> None:
    model = onnx.load(MODELS / "tv_convnext_tiny.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    result = prune_width(model, ratio=0.25, calib=str(calib))
    _check(result.model)
    assert [(s["width_before"], s["width_after"]) for s in result.report["streams"]] == [
        (8, 6), (16, 12), (32, 24), (64, 48)]
    assert model_stats(model).params - model_stats(result.model).params == result.report["params_removed_predicted"]
    x = np.load(calib)["input"][:2]
    assert np.isfinite(_logits(result.model, x)).all()


def test_width_refused_without_calib(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.onnx"
    rc = main(["prune", str(DIGITS), "-o", str(out), "--mode", "width", "--ratio", "0.25"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and not out.exists()
    assert "--calib" in err and "\n" not in err and "Traceback" not in err


def test_width_cli_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    rc = main(["prune", str(DIGITS), "-o", str(out), "--mode", "width", "--ratio", "0.25", "--calib", str(CALIB),
               "--report", str(report), "-q"])
    assert rc == 0 and out.exists()
    import json

    rep = json.loads(report.read_text())
    assert rep["mode"] == "width" and "exact" not in rep["validation"]
    assert rep["params_before"] - rep["params_after"] == rep["width"]["params_removed_predicted"]


def test_vit_stream_cut_through_class_token_and_patches(tmp_path: Path) -> None:
    """The stream runs through the patch Conv + runtime Reshape, the class token's Expand, torch attention's
    Shape reads and the class-token Gather: all cut consistently."""
    model = onnx.load(MODELS / "tv_vit_b_16.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    result = prune_width(model, ratio=0.25, calib=str(calib))
    _check(result.model)
    assert [(s["width_before"], s["width_after"]) for s in result.report["streams"]] == [(64, 48)]
    assert model_stats(model).params - model_stats(result.model).params == result.report["params_removed_predicted"]
    assert _logits(result.model, np.load(calib)["input"][:3]).shape == (3, 10)


def test_width_mode_rotates_pre_norm_and_says_why_not_post_norm(tmp_path: Path) -> None:
    """--mode width rotates + slices a pre-norm model (the rotation proven exact in the run) and falls back to
    plain channel pruning, saying why, for a post-norm one."""
    import json

    from tests.builders import prenorm_stack

    src = tmp_path / "pre.onnx"
    onnx.save(prenorm_stack(), src)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).standard_normal((64, 5, 4)).astype(np.float32))
    reports = []
    for model, data in ((src, calib), (DIGITS, CALIB)):
        report = tmp_path / f"{model.stem}.json"
        assert main(["prune", str(model), "-o", str(tmp_path / f"{model.stem}_out.onnx"), "--mode", "width",
                     "--ratio", "0.25", "--calib", str(data), "--report", str(report), "-q"]) == 0
        reports.append(json.loads(report.read_text())["width"])
    assert reports[0]["method"] == "rotate" and reports[0]["rotation_check"]["passed"] is True
    assert reports[1]["method"] == "plain" and "pre-norm" in reports[1]["why_not_rotated"]


def test_stream_coverage_counts_the_stream_on_top_of_heads_and_ffn() -> None:
    """Heads + FFN reach half of a transformer's weighted MACs (each projection has one side on the stream);
    with the stream as a group the rest is reached too. A model whose stream is a graph output keeps it."""
    from onnxprune.core.io import load_model
    from onnxprune.recovery.width import stream_coverage
    from onnxprune.structured.analysis import analyze
    from onnxprune.structured.prune import coverage

    model = load_model(DIGITS)
    structured = coverage(model, analyze(model))
    assert 0.45 < structured <= 0.5
    assert stream_coverage(model) > 0.99
    convnext = load_model(MODELS / "tv_convnext_tiny.onnx")
    assert stream_coverage(convnext) > coverage(convnext, analyze(convnext)) + 0.5


def test_rmsnorm_stream_with_shared_readers_is_cut_and_refit() -> None:
    """Llama-style streams: RMSNorm written as Pow/ReduceMean/Sqrt/Div/Mul, and several readers of one norm
    output (gate and up, as q/k/v are). Width mode cuts the stream, each reader is re-fitted on its own
    rows (a reader's input collected once, not once per reader), and the re-fit lowers every reader's error."""
    from onnxprune.recovery.width import stream_coverage
    from onnxprune.structured.analysis import analyze
    from onnxprune.structured.prune import coverage

    model = builders.prenorm_stack(norm="rms", gated=True)
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((8, 5, 4)).astype(np.float32)} for _ in range(4)]
    result = prune_width(model, ratio=0.25, calib=calib)
    assert [s["width_after"] for s in result.report["streams"]] == [12]
    fitted = result.report["refit"]
    assert len(fitted) == 5  # 2 blocks x (gate, up) and the head: every reader of the stream
    assert all(f["rel_error_after"] < 0.5 * f["rel_error_before"] for f in fitted)
    session = create_session(result.model)
    (logits,) = run_session(session, calib[0]).values()
    assert logits.shape == (8, 5)
    # structured mode still blocks the RMS-normalized stream; width mode reaches it
    assert stream_coverage(model) > coverage(model, analyze(model)) + 0.3


def _gpt2_prenorm(d: int = 16, hidden: int = 32) -> onnx.ModelProto:
    """Embedding, then ``x + c_proj(relu(c_fc(LN(x))))`` with GPT-2's Conv1D layers, whose flatten reads the
    stream's width at run time (``Shape -> Slice -> Squeeze -> Unsqueeze -> Concat`` into a reshape target)."""
    from attention_builders import conv1d

    g = builders.GraphBuilder(0)
    x = g.op("MatMul", ["x", g.weight((4, d))])
    ln = g.op("LayerNormalization", [x, g.weight((d,), "gamma", low=0.5), g.weight((d,), "beta")], axis=-1)
    y = g.op("Add", [x, conv1d(g, g.op("Relu", [conv1d(g, ln, d, hidden)]), hidden, d)])
    g.nodes.append(onnx.helper.make_node("MatMul", [y, g.weight((d, 3))], ["out"], name="head"))
    return g.build([builders.vinfo("x", ["B", "T", 4])], [builders.vinfo("out", ["B", "T", 3])])


def test_a_stream_width_read_at_run_time_is_cut_in_width_mode() -> None:
    """GPT-2's Conv1D reads the stream's width into a reshape target at run time: freezing makes that read a
    constant, and folding makes the pieces computed from it constants the width rules rewrite. Without the
    folding the stream stayed blocked ("entry 1 of its target ... computed at runtime by Unsqueeze")."""
    from onnxprune.recovery.width import stream_coverage

    model = _gpt2_prenorm()
    dims = {"B": 4, "T": 5}
    assert stream_coverage(model, dims=dims) > 0.9
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((4, 5, 4)).astype(np.float32)} for _ in range(3)]
    result = prune_width(model, ratio=0.25, calib=calib, dims=dims)
    assert [s["width_after"] for s in result.report["streams"]] == [12]
    for batch, t in ((1, 5), (3, 9)):  # the run-time reads still follow other sizes
        x = rng.standard_normal((batch, t, 4)).astype(np.float32)
        (out,) = run_session(create_session(result.model), {"x": x}).values()
        assert out.shape == (batch, t, 3)


def test_width_mode_from_a_file_reports_what_it_does_from_memory(tmp_path: Path) -> None:
    """From a file the input is handed over and freed before rotating, the rotation checked against the file:
    the same pruned model and the same report (the rotation check names the model, not a path)."""
    from onnxprune.pipeline import prune
    from tests.builders import prenorm_stack

    src = tmp_path / "pre.onnx"
    onnx.save(prenorm_stack(), src)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).standard_normal((64, 5, 4)).astype(np.float32))
    config = {"mode": "width", "ratio": 0.25, "calib": str(calib)}
    from_file, from_memory = prune(src, config), prune(onnx.load(src), config)
    assert from_file.model.SerializeToString() == from_memory.model.SerializeToString()
    check = from_file.report["width"]["rotation_check"]
    assert check == from_memory.report["width"]["rotation_check"] and check["passed"] is True
    assert check["original"].startswith("<")
