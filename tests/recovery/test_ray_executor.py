"""--executor ray: equal results to the local executor on a 2-worker local cluster, a killed worker is
retried, and a clear line without Ray installed."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from onnxprune.cli.main import main
from onnxprune.recovery.sensitivity import sensitivity

CNN = "models/digits_cnn.onnx"
CNN_CALIB = "models/digits_cnn_calib.npz"
ARGS = {"ratios": (0.3, 0.6), "method": "model", "max_samples": 64}


def test_without_ray_one_line_before_any_work(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert main(["sensitivity", CNN, "--calib", CNN_CALIB, "--executor", "ray"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['onnxprune: error: --executor ray needs Ray, which is not installed; install it with '
                   'pip install -e ".[distributed]" (or pip install ray)']


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_equals_local_on_two_workers(ray_cluster):
    local = sensitivity(CNN, CNN_CALIB, **ARGS)
    on_ray = sensitivity(CNN, CNN_CALIB, executor="ray", **ARGS)
    assert on_ray.to_dict() == local.to_dict()
    fast_local = sensitivity(CNN, CNN_CALIB, ratios=(0.3, 0.6), max_samples=64)
    assert sensitivity(CNN, CNN_CALIB, ratios=(0.3, 0.6), max_samples=64, executor="ray").to_dict() == \
        fast_local.to_dict()


def _measure_workers() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ray::_measure" in cmd:
                pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_killed_worker_is_retried_and_the_result_is_unchanged(ray_cluster):
    local = sensitivity(CNN, CNN_CALIB, **ARGS)
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for pid in _measure_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one)
    killer.start()
    result = sensitivity(CNN, CNN_CALIB, executor="ray", **ARGS)
    killer.join()
    assert killed, "no Ray worker was seen running a candidate"
    assert result.to_dict() == local.to_dict()
