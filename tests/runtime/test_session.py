"""onnxruntime sessions, provider names, CUDA checks and progress bars (onnxprune.runtime.session, .progress)."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import conv_relu_conv, make_model, mlp, vinfo
from onnx import helper

from onnxprune.core import progress as progress_mod
from onnxprune.core.errors import ConfigError, ModelLoadError, UnsupportedModelError
from onnxprune.runtime.feeds import random_feeds
from onnxprune.runtime.session import (
    DeviceRunner,
    create_session,
    cuda_available,
    parse_providers,
    resolve_provider,
    run_session,
)

HAS_CUDA = cuda_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and an NVIDIA GPU (CUDAExecutionProvider)")


def test_provider_names():
    assert resolve_provider("CPU") == "CPUExecutionProvider"
    assert resolve_provider("cuda") == "CUDAExecutionProvider"
    assert resolve_provider("MyFancyExecutionProvider") == "MyFancyExecutionProvider"
    assert parse_providers("cpu, cuda,cpu") == ("cpu", "cuda")
    assert parse_providers(["CPUExecutionProvider", "trt"]) == ("cpu", "tensorrt")
    with pytest.raises(ConfigError, match="unknown provider 'gpu'"):
        parse_providers("gpu")
    with pytest.raises(ConfigError, match="no provider given"):
        parse_providers(" , ")


def test_cpu_session_runs_and_matches_numpy():
    model = mlp()
    session = create_session(model, provider="cpu", threads=1)
    assert session.get_providers() == ["CPUExecutionProvider"]
    feeds = random_feeds(model, seed=0, batch=3)
    out = run_session(session, feeds)["out"]
    w = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    h = np.maximum(feeds["x"] @ w["fc1_w"].T + w["fc1_b"], 0)
    np.testing.assert_allclose(out, h @ w["fc2_w"] + w["fc2_b"], rtol=1e-5, atol=1e-5)


def test_session_from_path_and_missing_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(mlp(), path)
    assert create_session(path).get_inputs()[0].name == "x"
    with pytest.raises(ModelLoadError, match="no such file"):
        create_session(tmp_path / "missing.onnx")


def test_model_onnxruntime_cannot_load_is_a_typed_error():
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "custom", [vinfo("x", [2])], [vinfo("y", [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedModelError, match=r"onnxruntime \(CPUExecutionProvider\) cannot load"):
        create_session(model)


def test_run_failure_is_a_typed_error():
    session = create_session(mlp())
    with pytest.raises(UnsupportedModelError, match="failed to run.*check the input shapes"):
        run_session(session, {"x": np.zeros((2, 3), np.float32)})


def test_bad_thread_count():
    with pytest.raises(ConfigError, match="threads must be at least 1"):
        create_session(mlp(), threads=0)


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here; the unavailable-provider message cannot be seen")
def test_cuda_missing_says_how_to_install():
    with pytest.raises(ConfigError, match=r"CUDAExecutionProvider is not available .*pip install -e \"\.\[gpu\]\""):
        create_session(mlp(), provider="cuda")


@needs_cuda
def test_cuda_session_really_runs_on_cuda_and_matches_cpu():
    model = mlp()
    session = create_session(model, provider="cuda")
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    feeds = random_feeds(model, seed=1, batch=4)
    gpu = run_session(session, feeds)["out"]
    cpu = run_session(create_session(model), feeds)["out"]
    # CUDA's TF32 products (onnxruntime's default) differ from the CPU's float32 by ~1e-3 relative
    np.testing.assert_allclose(gpu, cpu, rtol=1e-2, atol=1e-2 * float(np.abs(cpu).max()))


@needs_cuda
def test_device_runner_keeps_outputs_on_the_gpu():
    model = mlp()
    session = create_session(model, provider="cuda")
    runner = DeviceRunner(session, random_feeds(model, seed=0, batch=2))
    runner.run()
    outputs = runner.binding.get_outputs()
    assert outputs[0].device_name().lower() == "cuda"
    assert tuple(outputs[0].shape()) == (2, 10)


def test_identity_model_session_on_tiny_graph():
    # a graph with no initializers at all still gets a session
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vinfo("x", [2])], [vinfo("y", [2])])
    out = run_session(create_session(model), {"x": np.array([-1.0, 2.0], np.float32)})
    assert out["y"].tolist() == [0.0, 2.0]
    assert "CPUExecutionProvider" in ort.get_available_providers()


# -- progress --------------------------------------------------------------------------------------
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _progress_enabled_again():
    """Another test's ``main([..., "--quiet"])`` turns bars off for the whole process; start from on."""
    progress_mod.set_progress_enabled(True)
    yield
    progress_mod.set_progress_enabled(True)


def test_progress_silent_without_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress_mod.progress_enabled()
    assert list(progress_mod.progress(range(3), desc="x")) == [0, 1, 2]


def test_progress_on_a_terminal_unless_ci_or_disabled(monkeypatch):
    fake = _Tty()
    monkeypatch.setattr("sys.stderr", fake)
    monkeypatch.delenv("CI", raising=False)
    assert progress_mod.progress_enabled()
    assert list(progress_mod.progress(range(3), desc="runs")) == [0, 1, 2]
    assert "runs" in fake.getvalue()
    monkeypatch.setenv("CI", "true")
    assert not progress_mod.progress_enabled()
    monkeypatch.delenv("CI")
    progress_mod.set_progress_enabled(False)
    assert not progress_mod.progress_enabled()


def test_cli_quiet_disables_progress(tmp_path):
    from onnxprune.cli.main import main

    path = tmp_path / "m.onnx"
    onnx.save(mlp(), path)
    seen: list[bool] = []
    real = progress_mod.set_progress_enabled

    def spy(enabled: bool) -> None:
        seen.append(bool(enabled))
        real(enabled)

    progress_mod.set_progress_enabled = spy
    try:
        assert main(["validate", str(path), str(path), "--quiet"]) == 0
    finally:
        progress_mod.set_progress_enabled = real
    # Off for the run, then restored: main() may be called many times in one process.
    assert seen == [False, True]
    assert progress_mod.progress_switched_on()


def test_sessions_timed_in_turn_do_not_spin_and_others_keep_the_default(tmp_path):
    """Alternating sessions with spin-waiting threads timed their contention (ResNet-50, 2 threads: 92 ms per run
    alternated against 48 ms alone); the benchmark's and the latency table's sessions turn spinning off."""
    from onnxprune.runtime.bench import _runner

    key = "session.intra_op.allow_spinning"
    model = conv_relu_conv(batch=1)
    served = create_session(model, threads=2)
    with pytest.raises(RuntimeError, match="does not have configuration"):  # onnxruntime's default: spin
        served.get_session_options().get_session_config_entry(key)
    timed = create_session(model, threads=2, alternated=True)
    assert timed.get_session_options().get_session_config_entry(key) == "0"
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    session, run = _runner(path, random_feeds(model, seed=0), name="m", provider="cpu", threads=2, on_device=False)
    assert session.get_session_options().get_session_config_entry(key) == "0"
    run()
