"""Sharded calibration: the sum of shards equals one pass to float64 round-off (local, processes; Ray in
test_ray_executor.py)."""

from __future__ import annotations

import pytest
from stats_compare import close_reports as _close_reports
from stats_compare import same_stats as _same

from onnxprune.core.errors import ConfigError
from onnxprune.recovery.calibrate import collect_stats
from onnxprune.recovery.shards import collect_stats_sharded

CNN = "models/digits_cnn.onnx"
CNN_CALIB = "models/digits_cnn_calib.npz"


def _layers():
    import onnx

    names = [n.name for n in onnx.load(CNN).graph.node if n.op_type in ("Conv", "Gemm")]
    return [names[2], names[-1]]


@pytest.mark.parametrize("executor", ["local", "processes"])
def test_shards_sum_to_one_pass(executor):
    layers = _layers()
    one = collect_stats(CNN, CNN_CALIB, gram_for=layers, tensors=[])
    _same(collect_stats_sharded(CNN, CNN_CALIB, shards=3, gram_for=layers, executor=executor), one)
    with pytest.raises(ConfigError, match="shards must be >= 1"):
        collect_stats_sharded(CNN, CNN_CALIB, shards=0)


def test_channel_stats_merge(tmp_path):
    import onnx

    node = next(n for n in onnx.load(CNN).graph.node if n.op_type == "Relu")
    one = collect_stats(CNN, CNN_CALIB, tensors={node.output[0]: 1})
    _same(collect_stats_sharded(CNN, CNN_CALIB, shards=4, tensors={node.output[0]: 1}, executor="local"), one)


def test_sensitivity_with_processes_calibrates_in_shards_equal_to_local(monkeypatch):
    """``executor="processes"`` spreads sensitivity's one calibration pass over worker processes, in shards of
    the first ``max_samples`` samples (not the whole file): statistics equal to the local pass to float64
    round-off, and the report to round-off."""
    from onnxprune.recovery import shards
    from onnxprune.recovery.sensitivity import SHARD_SAMPLES, start_sensitivity

    calls = []
    real = shards.collect_stats_sharded

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(shards, "collect_stats_sharded", spy)
    args = {"ratios": (0.3, 0.6), "max_samples": 3 * SHARD_SAMPLES, "recover": "bias"}
    local = start_sensitivity(CNN, CNN_CALIB, **args)
    assert not calls
    spread = start_sensitivity(CNN, CNN_CALIB, executor="processes", workers=2, **args)
    assert [(c["executor"], c["shards"], c["max_samples"], c["workers"]) for c in calls] == \
        [("processes", 3, 3 * SHARD_SAMPLES, 2)]
    _same(spread.evaluator.spec.rstats, local.evaluator.spec.rstats)  # Grams and channel means alike
    assert spread.samples == local.samples == 3 * SHARD_SAMPLES
    _close_reports(spread.report(), local.report())


def test_shards_follow_the_batches_and_max_samples():
    """Shard ranges start at multiples of the batch and stop at ``max_samples``: rows of exactly the samples
    one pass with ``iter_feeds(max_samples=)`` reads."""
    layers = _layers()
    from onnxprune.core.io import load_model
    from onnxprune.recovery.calibrate import iter_feeds

    m = load_model(CNN)
    one = collect_stats(m, list(iter_feeds(m, CNN_CALIB, max_samples=100)), gram_for=layers)
    _same(collect_stats_sharded(CNN, CNN_CALIB, shards=3, gram_for=layers, executor="local", max_samples=100), one)
