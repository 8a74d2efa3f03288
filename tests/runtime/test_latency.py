"""Latency tables: timed in onnxruntime, cached atomically per key, no cache with --no-cache, a time budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import conv_relu_conv

from onnxprune.runtime.latency import LatencyCache, cache_dir, measure, onnxruntime_timer, table_key


@pytest.fixture()
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CACHE_DIR", str(tmp_path / "lat"))
    return tmp_path / "lat"


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("ONNXPRUNE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "onnxprune" / "latency"


def test_key_depends_on_provider_threads_and_model():
    a = table_key(provider="cpu", threads=1, fingerprint="f")
    assert a == table_key(provider="cpu", threads=1, fingerprint="f")
    assert len({a, table_key(provider="cpu", threads=2, fingerprint="f"),
                table_key(provider="cuda", threads=1, fingerprint="f"),
                table_key(provider="cpu", threads=1, fingerprint="g")}) == 4


def test_measured_values_are_cached_and_reused(cache_home):
    model = conv_relu_conv(batch=1)
    calls = []

    def timer(models):
        calls.append(len(models))
        return [0.5 + i for i in range(len(models))]

    cache = LatencyCache.open("k")
    got = measure([(1, [("a", model), ("b", model), ("a", model)])], timer=timer, cache=cache, budget_s=10)
    assert calls == [2] and got.ms == {("a", 1): 0.5, ("b", 1): 1.5} and got.complete
    doc = json.loads((cache_home / "k.json").read_text())
    assert doc["entries"] == {"a@1": 0.5, "b@1": 1.5}
    assert not list(cache_home.glob("*.tmp*")) and [p.name for p in cache_home.iterdir()] == ["k.json"]
    again = measure([(1, [("a", model), ("b", model)])], timer=timer, cache=LatencyCache.open("k"), budget_s=10)
    assert calls == [2] and again.cached == 2 and again.timed == 0


def test_no_cache_writes_nothing(cache_home):
    model = conv_relu_conv(batch=1)
    measure([(1, [("a", model)])], timer=lambda ms: [1.0] * len(ms), cache=LatencyCache.open(None), budget_s=10)
    assert not cache_home.exists()


def test_a_corrupt_cache_is_ignored(cache_home):
    cache_home.mkdir(parents=True)
    (cache_home / "k.json").write_text("{not json")
    assert LatencyCache.open("k").entries == {}


def test_budget_stops_new_sets():
    model = conv_relu_conv(batch=1)
    got = measure([(1, [("a", model)]), (8, [("a", model)])], timer=lambda ms: [1.0] * len(ms),
                  cache=LatencyCache.open(None), budget_s=0)
    assert got.ms == {} and not got.complete


def test_onnxruntime_timer_times_real_sessions():
    small, big = conv_relu_conv(c_mid=4, hw=8, batch=1), conv_relu_conv(c_mid=64, hw=48, batch=1)
    ms = onnxruntime_timer(threads=1, rounds=5)([small, big])
    assert len(ms) == 2 and 0 < ms[0] < ms[1]


def test_a_set_onnxruntime_cannot_run_is_skipped_not_fatal():
    from onnxprune.core.errors import UnsupportedModelError

    model = conv_relu_conv(batch=1)

    def failing(models):
        raise UnsupportedModelError("onnxruntime (cpu) failed to run a layer timed alone: kernel error")

    got = measure([(1, [("a", model)]), (8, [("b", model)])], timer=failing, cache=LatencyCache.open(None),
                  budget_s=10)
    assert got.ms == {} and not got.complete


def test_summary_is_the_fastest_of_few_rounds_and_the_median_of_many():
    from onnxprune.runtime.latency import MEDIAN_ROUNDS, summary_ms

    few = [5.0, 3.0, 9.0]
    assert summary_ms(few) == 5.0 and summary_ms(few, fastest=True) == 3.0
    many = [1.0] + [4.0] * (MEDIAN_ROUNDS - 1)  # one lucky run among many: the median is what the benchmark compares
    assert summary_ms(many, fastest=True) == 4.0


def test_a_set_with_one_model_missing_is_timed_whole_again(cache_home):
    """A width's factor is a ratio within one set: a cached full width (an earlier run's) is timed again beside the
    new width, not mixed with it, and its entry is replaced."""
    model = conv_relu_conv(batch=1)
    cache = LatencyCache.open("k")
    cache.put("full", 1, 9.0)  # timed earlier, on a busier machine
    calls = []

    def timer(models):
        calls.append(len(models))
        return [2.0, 1.0][: len(models)]

    got = measure([(1, [("full", model), ("cut", model)])], timer=timer, cache=cache, budget_s=10)
    assert calls == [2] and got.ms == {("full", 1): 2.0, ("cut", 1): 1.0} and got.timed == 2 and got.cached == 0
    assert LatencyCache.open("k").get("full", 1) == 2.0
    again = measure([(1, [("full", model), ("cut", model)])], timer=timer, cache=LatencyCache.open("k"), budget_s=10)
    assert calls == [2] and again.cached == 2 and again.ms == got.ms


def test_out_of_budget_a_partly_cached_set_reads_what_the_cache_has(cache_home):
    model = conv_relu_conv(batch=1)
    cache = LatencyCache.open("k")
    cache.put("full", 1, 9.0)
    got = measure([(1, [("full", model), ("cut", model)])], timer=lambda ms: [1.0] * len(ms), cache=cache,
                  budget_s=0)
    assert got.ms == {("full", 1): 9.0} and not got.complete and got.timed == 0


def test_a_model_as_served_runs_with_its_dynamic_batch_fed_at_the_asked_size():
    """A model that runs only at batch 4 (a Reshape to [4, 3]) runs as served at 4 and fails at 1: the batch is
    fed, and the model keeps its dynamic axis."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.core.errors import OnnxPruneError
    from onnxprune.runtime.latency import AsServed, onnxruntime_round_timer

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
        [numpy_helper.from_array(np.array([4, 3], dtype=np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    timer = onnxruntime_round_timer(threads=1, rounds=3, min_rounds=3)
    rounds = timer([AsServed(model, 4), AsServed(model, 4, {"N": 1})])
    assert len(rounds) == 2 and all(len(r) >= 3 and min(r) > 0 for r in rounds)
    with pytest.raises(OnnxPruneError):
        timer([AsServed(model, 1)])
