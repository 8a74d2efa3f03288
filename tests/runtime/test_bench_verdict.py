"""Benchmark rows that cannot be trusted are flagged; a slower pruned model gets a warning with a hint."""

from __future__ import annotations

from builders import mlp

from onnxprune.runtime.bench import BenchResult, ModelInfo, _with_speedups, benchmark, format_bench
from onnxprune.runtime.bench_verdict import bench_flags, slower_warning


def _result(model: str, times: list[float]) -> BenchResult:
    import numpy as np

    p50, p90, p99 = (float(v) for v in np.percentile(times, [50, 90, 99]))
    return BenchResult(model, "cpu", 1, len(times), p50, p90, p99, float(np.mean(times)), min(times),
                       1e3 / p50, None, False, times_ms=tuple(times))


def _report(base: list[float], pruned: list[float], ideal: float = 1.4) -> dict:
    infos = [ModelInfo("original", "", 10, 1400, 1, None), ModelInfo("pruned", "", 5, round(1400 / ideal), 1, None)]
    out = _with_speedups([_result("original", base), _result("pruned", pruned)], infos, baseline_active=True)
    return {"models": [i.to_dict() for i in infos], "results": [r.to_dict() for r in out]}


def test_a_speedup_far_above_the_mac_ideal_is_flagged_implausible() -> None:
    # The base model hit a stall in most rounds: 8.86x against an ideal of 1.40x is noise, not pruning.
    report = _report([8.86] * 6 + [1.0] * 4, [1.0] * 10)
    text = format_bench(report)
    row = next(line for line in text.splitlines() if line.startswith("pruned ") and " cpu " in line)
    assert "IMPLAUSIBLE: 8.86x speedup against a MAC ideal of 1.40x" in row
    assert "WARNING: timings are noisy: rerun with more --runs" in text


def test_a_wide_spread_across_rounds_is_flagged_noisy() -> None:
    report = _report([1.0] * 10, [0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 3.0, 3.0])
    flags = bench_flags(report["results"])
    assert [f["model"] for f in flags] == ["pruned"]
    reasons = flags[0]["reasons"]
    assert any(r.startswith("NOISY: p90/p50 3.75 > 1.5") for r in reasons), reasons
    assert any(r.startswith("NOISY: speedup varies 0.33x-1.25x across rounds") for r in reasons), reasons


def test_steady_timings_are_not_flagged() -> None:
    report = _report([1.0, 1.02, 0.98, 1.01, 0.99, 1.0], [0.8, 0.81, 0.79, 0.8, 0.82, 0.8])
    assert bench_flags(report["results"]) == []
    assert "NOISY" not in format_bench(report) and "IMPLAUSIBLE" not in format_bench(report)


def test_slower_warning_gives_the_hint_that_helps() -> None:
    report = _report([1.0] * 6, [1.6] * 6)
    msg = slower_warning(report, round_to=None)
    assert msg is not None and "SLOWER than the original (cpu batch 1: 0.62x)" in msg and "--round-to 8" in msg
    assert "larger --round-to than 8 (e.g. 16)" in (slower_warning(report, round_to=8) or "")
    # after a retry at 16 (the never-slower retry), the hint names a larger value, not 16 again
    assert "larger --round-to than 16 (e.g. 32)" in (slower_warning(report, round_to=16) or "")
    assert slower_warning(_report([1.0] * 6, [0.8] * 6), round_to=None) is None


def test_a_real_benchmark_report_carries_its_flags() -> None:
    doc = benchmark([mlp(hidden=64), mlp(hidden=16)], names=["original", "pruned"], runs=3, warmup=0,
                    memory=False).to_dict()
    assert isinstance(doc["flags"], list)
    assert doc["flags"] == bench_flags(doc["results"])


def test_a_tie_within_the_margin_is_said_as_a_tie() -> None:
    """The never-slower check keeps a model whose per-round speedups sit within its 3% margin; the warning then
    says it is no faster and was kept, not that it is SLOWER. A verdict that calls it slower keeps the word."""
    from onnxprune.runtime.speed_verdict import speed_verdict

    tie = _report([1.0] * 20, [1.0 / 0.98] * 20)
    verdict = speed_verdict("cpu", 1, [1.0] * 20, [1.0 / 0.98] * 20)
    assert not verdict.slower
    msg = slower_warning(tie, round_to=8, verdicts=[verdict])
    assert msg is not None and "SLOWER" not in msg and "within the 3% margin that counts as a tie" in msg
    assert "larger --round-to than 8" in msg
    assert slower_warning(tie, round_to=8, verdicts=[verdict.to_dict()]) == msg  # as read back from the report
    slow = _report([1.0] * 20, [1.6] * 20)
    called = speed_verdict("cpu", 1, [1.0] * 20, [1.6] * 20)
    assert "SLOWER" in (slower_warning(slow, round_to=8, verdicts=[called]) or "")
    assert "SLOWER" in (slower_warning(tie, round_to=8, verdicts=[]) or "")  # no verdict: the median decides
