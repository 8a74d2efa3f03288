"""--executor ray on a real local cluster of 2 worker processes that this module starts and stops: results
equal to the local executor whatever the number of workers, models and data sent once (not per task), a
killed worker retried with the result unchanged, failed candidates named, and one clear line without Ray."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from stats_compare import close_reports as _close_reports
from stats_compare import same_stats as _same

from onnxprune.core.errors import CalibrationError, OnnxPruneError
from onnxprune.recovery import ray_executor, shards
from onnxprune.recovery.calibrate import collect_stats
from onnxprune.recovery.sensitivity import sensitivity, start_sensitivity
from onnxprune.recovery.shards import collect_stats_sharded

CNN = "models/digits_cnn.onnx"
CNN_CALIB = "models/digits_cnn_calib.npz"
ARGS = {"ratios": (0.3, 0.6), "method": "model", "max_samples": 64}

# Runs the CLI with `import ray` failing (ImportError), as where Ray is not installed; onnx and onnxruntime
# are the real ones. Prints whether onnxruntime was imported: it must not be, no work may start.
_NO_RAY = """
import sys
sys.modules["ray"] = None
from onnxprune.cli.main import main
rc = main(sys.argv[1:])
print("RC", rc, "onnxruntime" in sys.modules)
"""


@pytest.mark.parametrize("command", [
    ["sensitivity", CNN, "--calib", CNN_CALIB, "--executor", "ray"],
    ["prune", CNN, "-o", "{out}", "--target-macs", "0.5", "--calib", CNN_CALIB, "--executor", "ray"],
])
def test_without_ray_one_line_before_any_work(tmp_path, command):
    out = tmp_path / "out.onnx"
    argv = [a.format(out=out) for a in command]
    proc = subprocess.run([sys.executable, "-c", _NO_RAY, *argv], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["RC", "1", "False"], proc.stdout + proc.stderr  # exit 1, no onnxruntime
    assert proc.stderr.strip().splitlines() == [
        'onnxprune: error: --executor ray needs Ray, which is not installed; install it with '
        'pip install -e ".[distributed]" (or pip install ray)']
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[distributed]"')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_report():
    return sensitivity(CNN, CNN_CALIB, **ARGS)


@pytest.mark.slow
def test_sensitivity_on_ray_equals_local_for_one_and_two_workers(ray_cluster, local_report, monkeypatch):
    for workers in (2, 1):
        on_ray = sensitivity(CNN, CNN_CALIB, executor="ray", workers=workers, **ARGS)
        assert on_ray.to_dict() == local_report.to_dict(), f"{workers} workers"
    assert [g.group for g in on_ray.ranked()] == [g.group for g in local_report.ranked()]
    # the default (Gram-scored, one whole-model anchor per group) path as well
    # the default (Gram-scored, one whole-model anchor per group) path as well: its calibration pass runs in
    # shards on Ray (statistics summed in another order: float64 round-off) and its anchors run on the whole
    # model there (against local sub-models: float32 round-off)
    fast = {"ratios": (0.3, 0.6), "max_samples": 128, "recover": "bias"}
    local = start_sensitivity(CNN, CNN_CALIB, **fast)
    calls = []
    real = shards.collect_stats_sharded
    monkeypatch.setattr(shards, "collect_stats_sharded", lambda *a, **k: calls.append(k) or real(*a, **k))
    for workers in (2, 1):
        spread = start_sensitivity(CNN, CNN_CALIB, executor="ray", workers=workers, **fast)
        _same(spread.evaluator.spec.rstats, local.evaluator.spec.rstats)
        _close_reports(spread.report(), local.report())
    assert [(c["executor"], c["shards"], c["workers"]) for c in calls] == [("ray", 2, 2), ("ray", 2, 1)]


class _Spy:
    """Records what the executor puts in the object store and the arguments of every task it submits
    (the real Ray functions still run)."""

    def __init__(self, ray, monkeypatch) -> None:
        self.puts: list[object] = []
        self.calls: list[tuple[object, ...]] = []
        real_put, real_remote = ray.put, ray.remote

        def put(value, **kw):
            self.puts.append(value)
            return real_put(value, **kw)

        def remote(*a, **kw):
            def wrap(fn):
                rf = real_remote(*a, **kw)(fn)
                spy = self

                class Recording:
                    def remote(self, *args):
                        spy.calls.append(args)
                        return rf.remote(*args)

                return Recording()
            return wrap

        monkeypatch.setattr(ray, "put", put)
        monkeypatch.setattr(ray, "remote", remote)

    def check_tasks_carry_a_reference(self, ray) -> None:
        """One put per run; every task: the boxed reference plus a small item, never the model or data."""
        assert len(self.puts) == 1 and self.calls
        for box, item in self.calls:
            assert isinstance(box, list) and len(box) == 1 and isinstance(box[0], ray.ObjectRef)
            assert len(pickle.dumps(item)) < 1024, item  # the digits CNN alone is 300 kB


@pytest.mark.slow
def test_tasks_carry_object_refs_not_models(ray_cluster, monkeypatch, local_report):
    spy = _Spy(ray_cluster, monkeypatch)
    assert sensitivity(CNN, CNN_CALIB, executor="ray", **ARGS).to_dict() == local_report.to_dict()
    spy.check_tasks_carry_a_reference(ray_cluster)
    assert len(spy.calls) == sum(len(g.ratios) for g in local_report.groups)
    assert isinstance(spy.puts[0], ray_executor.CandidateSpec) and len(spy.puts[0].batches) == 2

    spy = _Spy(ray_cluster, monkeypatch)
    collect_stats_sharded(CNN, CNN_CALIB, shards=3, gram_for=_layers(), executor="ray")
    spy.check_tasks_carry_a_reference(ray_cluster)
    assert len(spy.calls) == 3 and isinstance(spy.puts[0], bytes) and len(spy.puts[0]) > 100_000


@pytest.mark.slow
def test_one_worker_runs_one_candidate_at_a_time(ray_cluster, monkeypatch, tmp_path, local_report):
    log = tmp_path / "spans"
    log.mkdir()

    def timed(box, item):
        import importlib
        import time as t

        start = t.monotonic()
        out = importlib.import_module("onnxprune.recovery.ray_executor")._measure(box, item)
        t.sleep(0.05)
        (log / f"{item[0][0]}_{item[0][1]}").write_text(f"{start} {t.monotonic()}")
        return out

    monkeypatch.setattr(ray_executor, "_measure", timed)
    assert sensitivity(CNN, CNN_CALIB, executor="ray", workers=1, **ARGS).to_dict() == local_report.to_dict()
    spans = sorted(tuple(map(float, f.read_text().split())) for f in log.iterdir())
    assert len(spans) == sum(len(g.ratios) for g in local_report.groups)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), "two candidates ran at once"


@pytest.mark.slow
def test_killed_worker_is_retried_and_the_result_is_unchanged(ray_cluster, monkeypatch, tmp_path, local_report):
    marker = tmp_path / "killed"

    def dies_once(box, item):
        import importlib
        import os as o

        try:  # the first task to get here kills its own worker process; its retry and the rest run normally
            o.close(o.open(marker, o.O_CREAT | o.O_EXCL | o.O_WRONLY))
        except FileExistsError:
            return importlib.import_module("onnxprune.recovery.ray_executor")._measure(box, item)
        o._exit(1)

    monkeypatch.setattr(ray_executor, "_measure", dies_once)
    result = sensitivity(CNN, CNN_CALIB, executor="ray", **ARGS)
    assert marker.exists(), "no worker was killed"
    assert result.to_dict() == local_report.to_dict()


@pytest.mark.slow
def test_run_that_cannot_finish_names_the_failed_candidates(ray_cluster, monkeypatch, local_report):
    doomed = local_report.groups[1].group

    def dies_on_one_group(box, item):
        import importlib
        import os as o

        if item[0][0] == doomed:
            o._exit(1)
        return importlib.import_module("onnxprune.recovery.ray_executor")._measure(box, item)

    monkeypatch.setattr(ray_executor, "_measure", dies_on_one_group)
    monkeypatch.setattr(ray_executor, "MAX_RETRIES", 1)
    total = sum(len(g.ratios) for g in local_report.groups)
    with pytest.raises(OnnxPruneError) as err:
        sensitivity(CNN, CNN_CALIB, executor="ray", **ARGS)
    msg = str(err.value)
    assert msg.startswith(f"2 of {total} candidates failed on Ray (each retried up to 1 times when its worker died)")
    assert f"group {doomed} at ratio 0.3 (" in msg and f"group {doomed} at ratio 0.6 (" in msg
    assert msg.count("group ") == 2


def _layers() -> list[str]:
    import onnx

    names = [n.name for n in onnx.load(CNN).graph.node if n.op_type in ("Conv", "Gemm")]
    return [names[2], names[-1]]


@pytest.mark.slow
def test_sharded_calibration_on_ray_equals_local_for_one_and_two_workers(ray_cluster):
    layers = _layers()
    one = collect_stats(CNN, CNN_CALIB, gram_for=layers)
    local = collect_stats_sharded(CNN, CNN_CALIB, shards=3, gram_for=layers, executor="local")
    for workers in (2, 1):
        on_ray = collect_stats_sharded(CNN, CNN_CALIB, shards=3, gram_for=layers, executor="ray", workers=workers)
        assert on_ray.samples == one.samples == local.samples
        for name, g in on_ray.grams.items():
            assert g.rows == one.grams[name].rows
            np.testing.assert_array_equal(g.gram, local.grams[name].gram)  # same shards: bit for bit
            np.testing.assert_array_equal(g.col_sum, local.grams[name].col_sum)
            np.testing.assert_allclose(g.gram, one.grams[name].gram, rtol=1e-12, atol=1e-9)  # float64 round-off
            np.testing.assert_allclose(g.col_sum, one.grams[name].col_sum, rtol=1e-12, atol=1e-9)


@pytest.mark.slow
def test_a_shard_that_cannot_finish_is_named(ray_cluster, monkeypatch):
    def dies_on_second(box, shard):
        import importlib
        import os as o

        if shard.start == bounds[1]:
            o._exit(1)
        return importlib.import_module("onnxprune.recovery.shards")._reduce_on_ray(box, shard)

    n = int(np.load(CNN_CALIB)[next(iter(np.load(CNN_CALIB).files))].shape[0])
    bounds = (np.linspace(0, n // 32, 4).astype(int) * 32).tolist()  # shards start at multiples of the batch
    monkeypatch.setattr(shards, "_reduce_on_ray", dies_on_second)
    monkeypatch.setattr(ray_executor, "MAX_RETRIES", 0)
    with pytest.raises(CalibrationError, match=rf"^1 of 3 calibration shards failed on Ray .*: shard 1 \(samples "
                                               rf"{bounds[1]}-{bounds[2]}: \w+\)$"):
        collect_stats_sharded(CNN, CNN_CALIB, shards=3, gram_for=_layers(), executor="ray")
