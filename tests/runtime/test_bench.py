"""Benchmarks: alternation, speedup math, skips, JSON schema, CLI (onnxprune.runtime.bench, cli bench)."""

from __future__ import annotations

import json

import onnx
import pytest
from builders import conv_bn_relu, mlp

from onnxprune.cli.main import main
from onnxprune.core.errors import ConfigError
from onnxprune.core.stats import model_stats
from onnxprune.runtime.bench import BenchResult, ModelInfo, _with_speedups, benchmark, format_bench, paired_ratio

RESULT_KEYS = {"model", "provider", "batch", "runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms",
               "throughput", "peak_rss_bytes", "io_binding", "speedup", "ideal_speedup", "efficiency", "slower",
               "times_ms"}


def _result(model: str, p50: float) -> BenchResult:
    return BenchResult(model, "cpu", 1, 10, p50, p50, p50, p50, p50, 1e3 / p50, None, False)


def test_speedup_ideal_speedup_efficiency_and_slower_flag():
    infos = [ModelInfo("orig", "", 10, 1000, 1, None), ModelInfo("fast", "", 5, 500, 1, None),
             ModelInfo("slow", "", 5, 250, 1, None)]
    out = _with_speedups([_result("orig", 2.0), _result("fast", 1.25), _result("slow", 2.5)], infos,
                         baseline_active=True)
    orig, fast, slow = out
    assert (orig.speedup, orig.ideal_speedup, orig.efficiency, orig.slower) == (1.0, 1.0, 1.0, False)
    assert fast.speedup == pytest.approx(1.6) and fast.ideal_speedup == pytest.approx(2.0)
    assert fast.efficiency == pytest.approx(0.8) and not fast.slower
    assert slow.speedup == pytest.approx(0.8) and slow.ideal_speedup == pytest.approx(4.0) and slow.slower
    text = format_bench({"models": [i.to_dict() for i in infos], "results": [r.to_dict() for r in out]})
    assert "slow" in text and "SLOWER than the first model" in text
    assert "WARNING: slower than the first model: slow (cpu, batch 1, speedup 0.80)" in text


def test_no_speedups_when_the_baseline_did_not_run():
    infos = [ModelInfo("orig", "", 10, 1000, 1, 1), ModelInfo("dyn", "", 5, 500, 1, None)]
    (only,) = _with_speedups([_result("dyn", 1.0)], infos, baseline_active=False)
    assert only.speedup is None and only.ideal_speedup is None and not only.slower


def test_benchmark_alternates_models_and_reports_a_json_schema():
    big, small = mlp(hidden=64), mlp(hidden=16)
    report = benchmark([big, small, big], names=["a", "b", "c"], batches=(1, 2), runs=3, warmup=1, threads=1)
    assert [(c.provider, c.batch) for c in report.cases] == [("cpu", 1), ("cpu", 2)]
    for case in report.cases:
        assert case.order == ("a", "b", "c") * 3
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) == {"models", "results", "skipped", "cases", "settings", "machine", "notes", "flags"}
    assert len(data["results"]) == 6 and all(set(r) == RESULT_KEYS for r in data["results"])
    assert {"date", "cpu", "cores", "onnxruntime"} <= set(data["machine"])
    assert data["settings"]["runs"] == 3 and data["settings"]["batches"] == [1, 2]
    # ideal speedup is exactly the MAC ratio from model_stats
    ratio = model_stats(big).macs / model_stats(small).macs
    assert report.result("b", "cpu", 2).ideal_speedup == pytest.approx(ratio)
    assert report.result("c", "cpu", 1).ideal_speedup == pytest.approx(1.0)
    r = report.result("a", "cpu", 2)
    assert r.p50_ms <= r.p90_ms <= r.p99_ms and r.speedup == 1.0
    assert r.throughput == pytest.approx(2 / (r.p50_ms / 1e3))
    assert r.peak_rss_bytes is None or r.peak_rss_bytes >= 0
    assert len(r.times_ms) == 3 and r.p50_ms == pytest.approx(sorted(r.times_ms)[1])
    assert paired_ratio(r, r) == 1.0
    with pytest.raises(ConfigError, match="same rounds"):
        paired_ratio(r, _result("x", 1.0))
    assert any("alternately" in n for n in report.notes) and any("RSS" in n for n in report.notes)


def test_a_time_floor_adds_rounds_up_to_the_cap():
    """A prune's benchmark of a tiny model: 30 rounds of 0.1 ms runs tell a 5% slowdown from noise no better than
    a coin, so rounds go on for ``min_seconds``, but never past ``max_runs``, and every model keeps one time
    per round (the per-round speedups pair them)."""
    big, small = mlp(hidden=64), mlp(hidden=16)
    capped = benchmark([big, small], batches=(1,), runs=5, warmup=1, threads=1, memory=False, min_seconds=30.0,
                       max_runs=40)
    a, b = capped.results
    assert a.runs == b.runs == 40 and len(a.times_ms) == len(b.times_ms) == 40
    assert len(capped.cases[0].order) == 80
    assert capped.settings["min_seconds"] == 30.0 and capped.settings["max_runs"] == 40
    floor = benchmark([big, small], batches=(1,), runs=5, warmup=1, threads=1, memory=False, min_seconds=0.05,
                      max_runs=100_000)
    assert 5 < floor.results[0].runs < 100_000  # stopped by the time floor, not by the cap
    plain = benchmark([big, small], batches=(1,), runs=5, warmup=1, threads=1, memory=False)
    assert plain.results[0].runs == 5 and "min_seconds" not in plain.settings


def test_fixed_batch_models_are_skipped_with_a_note():
    report = benchmark([conv_bn_relu()], batches=(1, 4), runs=2, warmup=0)
    assert [(r.model, r.batch) for r in report.results] == [("test", 1)]
    (skip,) = report.skipped
    assert skip.batch == 4 and "fixed to 1" in skip.reason
    assert "skipped test on cpu at batch 4" in report.to_text()


def test_benchmark_option_errors():
    with pytest.raises(ConfigError, match="no model"):
        benchmark([])
    with pytest.raises(ConfigError, match="runs must be integers >= 1"):
        benchmark([mlp()], runs=0)
    with pytest.raises(ConfigError, match="batches must be"):
        benchmark([mlp()], batches=(0,))
    with pytest.raises(ConfigError, match="2 names for 1 models"):
        benchmark([mlp()], names=["a", "b"])


def test_cli_bench_json_and_table(tmp_path, capsys):
    a, b = tmp_path / "model.onnx", tmp_path / "sub" / "model.onnx"
    b.parent.mkdir()
    onnx.save(mlp(hidden=64), a)
    onnx.save(mlp(hidden=16), b)
    assert main(["bench", str(a), str(b), "--runs", "2", "--warmup", "0", "--batches", "1,3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in data["models"]] == ["model", "model#2"]  # same stem, still told apart
    assert data["models"][0]["file_size"] == a.stat().st_size
    assert [c["order"] for c in data["cases"]] == [["model", "model#2"] * 2] * 2
    assert main(["bench", str(a), "--runs", "2", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "p50 ms" in out and "speedup" in out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--batches", "1,x"], "comma-separated integers"),
        (["--providers", "cuda,gpu"], "unknown provider"),
        (["--dim", "=3"], "NAME=VALUE"),
    ],
)
def test_cli_bench_user_errors_are_one_line(tmp_path, capsys, argv, match):
    path = tmp_path / "m.onnx"
    onnx.save(mlp(), path)
    assert main(["bench", str(path), *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxprune: error:") and match in err[0]


def test_cli_bench_missing_file(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"onnxprune: error: {tmp_path / 'nope.onnx'}: no such file; check the path"


def test_session_memory_grows_with_the_weights():
    # 2048 x 1024 float32 weights = 8 MiB; a session holds at least one copy of them
    big = mlp(d_in=1024, hidden=2048, d_out=4)
    report = benchmark([big, mlp()], names=["big", "small"], runs=1, warmup=0)
    big_peak = report.result("big", "cpu", 1).peak_rss_bytes
    small_peak = report.result("small", "cpu", 1).peak_rss_bytes
    if big_peak is None:
        pytest.skip("no /proc/self/clear_refs here: peak RSS cannot be measured")
    assert big_peak >= 8 * 2**20
    assert small_peak is not None and small_peak < big_peak
    assert benchmark([mlp()], runs=1, warmup=0, memory=False).results[0].peak_rss_bytes is None
