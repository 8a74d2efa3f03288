"""Ctrl-C leaves no partial output: exit code 130, one line on stderr, no output file, no temporary files.

Two kinds of evidence: real SIGINTs sent to a ``python -m onnxprune`` subprocess (while it saves, and while it
benchmarks), and in-process interrupts raised at the worst moment (after the temporary file is written,
before it is moved into place).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from builders import conv_bn_relu, wide_mlp

from onnxprune.cli.main import main
from onnxprune.core import io as opio
from onnxprune.core.io import save_model

INTERRUPTED = "onnxprune: interrupted; files are written atomically, so no partial output was left"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 100 MB model, so that saving and benchmarking take long enough to be interrupted."""
    path = tmp_path_factory.mktemp("wide") / "wide.onnx"
    save_model(wide_mlp(d=2048, layers=6), path)
    return path


_SPAWNED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_orphans():
    """A child that outlives a failed test would keep a core busy for hours (seen: benchmarks left running)."""
    yield
    while _SPAWNED:
        proc = _SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _spawn(argv: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # A test run started in the background by a shell without job control inherits SIGINT ignored, and so
    # would the child (Python then never raises KeyboardInterrupt): give the child the default disposition,
    # as a terminal's foreground process has.
    proc = subprocess.Popen([sys.executable, "-m", "onnxprune", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _SPAWNED.append(proc)
    return proc


def _wait_until_running(proc: subprocess.Popen[str], marker: str = "onnxruntime_pybind11_state",
                        timeout: float = 120.0) -> None:
    """Wait until the child has mapped ``marker`` (onnxruntime's extension: imported lazily, only once the
    command is working), so that the signal lands in the work and not in Python's start-up, whatever the load
    on the machine (a SIGINT during ``import onnxprune`` is Python's, not ours, and ends in a traceback)."""
    deadline = time.monotonic() + timeout
    maps = Path(f"/proc/{proc.pid}/maps")
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"finished before it was seen running: {proc.communicate()}"
        try:
            if marker in maps.read_text():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"the command did not load {marker} within {timeout} s")


def _assert_clean_interrupt(proc: subprocess.Popen[str], out_dir: Path, source: Path, digest: str) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [INTERRUPTED]
    assert sorted(p.name for p in out_dir.iterdir()) == []
    assert sha256(source) == digest


@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_sigint_while_saving(wide_model: Path, tmp_path: Path, mode: str) -> None:
    """SIGINT as soon as the temporary folder appears. On a loaded machine the signal can arrive after the
    rename already happened; that run must then have left one whole, valid model and nothing else. Every attempt
    must end one of those two ways, and at least one must be a real interruption (exit 130, nothing left)."""
    digest = sha256(wide_model)
    interrupted = 0
    for attempt in range(5):
        out_dir = tmp_path / f"out{attempt}"
        out_dir.mkdir()
        proc = _spawn(["prune", str(wide_model), "-o", str(out_dir / "p.onnx"), "--mode", mode, "--no-validate",
                       "--external-data", "-q"])
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".onnxprune-tmp-") for p in out_dir.iterdir()):
            assert proc.poll() is None, f"finished before saving was seen: {proc.communicate()}"
            assert time.monotonic() < deadline
            time.sleep(0.001)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert sha256(wide_model) == digest
        if proc.returncode == 0:  # too late: the rename had happened; the output must be whole
            assert not [p for p in out_dir.iterdir() if p.name.startswith(".onnxprune-tmp-")]
            onnx.checker.check_model(str(out_dir / "p.onnx"))
            continue
        assert proc.returncode == 130, err
        assert err.strip().splitlines() == [INTERRUPTED]
        assert sorted(p.name for p in out_dir.iterdir()) == []
        interrupted += 1
        break
    assert interrupted == 1, "five SIGINTs all arrived after the save had finished"


def test_sigint_while_benchmarking(wide_model: Path, tmp_path: Path) -> None:
    digest = sha256(wide_model)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _spawn(["prune", str(wide_model), "-o", str(out_dir / "p.onnx"), "--mode", "unstructured", "--bench",
                   "--runs", "1000000", "--batches", "2", "-q"])
    _wait_until_running(proc)
    time.sleep(1.0)  # lands in validation or the benchmark; the benchmark alone would run for hours
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _assert_clean_interrupt(proc, out_dir, wide_model, digest)


def test_sigint_during_the_bench_command(wide_model: Path, tmp_path: Path) -> None:
    proc = _spawn(["bench", str(wide_model), "--runs", "1000000", "--batches", "2"])
    _wait_until_running(proc)
    time.sleep(1.0)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == INTERRUPTED
    assert "Traceback" not in err


@pytest.mark.parametrize("external", [False, True])
def test_interrupt_after_the_temporary_file_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], external: bool) -> None:
    source = tmp_path / "in.onnx"
    onnx.save(conv_bn_relu(c_mid=16, c_out=16), str(source))
    digest = sha256(source)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    written: list[int] = []

    def interrupted(src: object, dst: object) -> None:
        written.append(Path(str(src)).stat().st_size)
        raise KeyboardInterrupt

    monkeypatch.setattr(opio.os, "replace", interrupted)
    argv = ["prune", str(source), "-o", str(out_dir / "p.onnx"), "--round-to", "8"]
    assert main(argv + (["--external-data"] if external else [])) == 130
    assert written and written[0] > 0
    assert capsys.readouterr().err.strip().splitlines() == [INTERRUPTED]
    assert sorted(p.name for p in out_dir.iterdir()) == []
    assert sha256(source) == digest
