"""The ``prune`` console summary: named groups, percent accuracy, "kept", short lines, benchmark rows.

Every test runs the real CLI through ``main([...])`` on a real model and reads what a user would read.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import onnx
from builders import mlp3

from onnxprune.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
CNN = str(ROOT / "models" / "digits_cnn.onnx")
MLP = str(ROOT / "models" / "digits_mlp.onnx")


def _prune(tmp_path, capsys, model: str, *extra: str) -> tuple[str, str]:
    assert main(["prune", model, "-o", str(tmp_path / "out.onnx"), *extra]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_mlp_drift_is_measured_on_the_probabilities_not_the_int64_label(tmp_path, capsys) -> None:
    out, _ = _prune(tmp_path, capsys, MLP)
    drift = next(line for line in out.splitlines() if "drift vs original" in line)
    # The MLP has an int64 'label' output (a class number) and a float 'probabilities' output.
    assert "'probabilities'" in drift and "cosine" in drift
    assert "label" not in drift


def test_summary_names_the_pruned_layers(tmp_path, capsys) -> None:
    out, _ = _prune(tmp_path, capsys, CNN, "--no-validate", "--round-to", "1")
    assert "4 of 4 pruned, 1 blocked" in out
    # each pruned group is named by its first producing layer and how many more layers move with it
    assert re.search(r"/features/features\.0/Conv \(\+3\)\s+32 -> 22\s+kept 69%", out), out
    assert "/features/features.7/Conv (+1)" in out
    assert "group 0" not in out


def test_verbose_lists_every_group_and_the_blocked_ones(tmp_path, capsys) -> None:
    out, _ = _prune(tmp_path, capsys, CNN, "--no-validate", "--verbose")
    assert "/head/Gemm" in out and "blocked: 'logits' is a graph output" in out


def test_kept_column_percent_accuracy_and_short_lines(tmp_path, capsys) -> None:
    out, _ = _prune(tmp_path, capsys, CNN, "--eval-data", str(ROOT / "models" / "digits_cnn_test.npz"),
                    "--round-to", "1", "--no-bench")
    header = out.splitlines()[1]
    assert header.split() == ["before", "after", "kept"]  # after/before, not "ratio" (--ratio is the share removed)
    assert re.search(r"params\s+75\.56k\s+37\.13k\s+49\.1%", out), out
    assert re.search(r"top-1 accuracy\s+99\.44% -> \d+\.\d\d% \([+-]\d+\.\d\d pts, n=360\)", out), out
    assert re.search(r"exactness\s+cpu: pass, max\|diff\| \S+ on 360 samples", out), out
    too_long = [line for line in out.splitlines()[1:] if len(line) >= 100]  # [0] holds the user's -o path
    assert not too_long, too_long


def test_the_macs_row_names_the_batch_it_was_counted_at(tmp_path, capsys) -> None:
    """With ``--dim batch=2`` the MACs are batch-2 counts: the row and the report say so, twice batch 1's."""
    macs = {}
    for batch in (1, 2):
        report = tmp_path / f"r{batch}.json"
        out, _ = _prune(tmp_path, capsys, CNN, "--no-validate", "--no-bench", "--dim", f"batch={batch}",
                        "--report", str(report))
        assert re.search(rf"MACs \(batch {batch}\)\s+\S+M", out), out
        data = json.loads(report.read_text())
        assert data["macs_batch"] == batch
        macs[batch] = data["macs_before"]
    assert macs[2] == 2 * macs[1]


def test_round_to_says_which_groups_it_left_unpruned(tmp_path, capsys) -> None:
    model = tmp_path / "mlp3.onnx"
    onnx.save(mlp3(h1=32, h2=6), model)  # 32 -> 22 rounds to 24; 6 -> 4 rounds back up to 6
    out, _ = _prune(tmp_path, capsys, str(model), "--round-to", "8", "--no-validate")
    assert "1 of 2 pruned" in out
    assert re.search(r"left unpruned\s+1 of 2 groups: --round-to 8 rounds their cut up to the full width", out), out


def test_bench_rows_reach_the_console(tmp_path, capsys) -> None:
    out, _ = _prune(tmp_path, capsys, MLP, "--no-validate", "--bench", "--runs", "3", "--warmup", "0",
                    "--round-to", "1")
    rows = [line for line in out.splitlines() if re.search(r"cpu batch \d+: [\d.]+ -> [\d.]+ ms, [\d.]+x", line)]
    assert len(rows) == 2, out  # batches 1 and 8
    assert "speed (p50)" in rows[0] and "(ideal 1.66x)" in rows[0]


def _as_if_pruned_ran_at(monkeypatch, speedup: float) -> None:
    """Real timings, then the pruned model's runs set to the original's over ``speedup`` in every round, as a
    model that ran that much slower would time (the per-round verdict, the medians and the confirmation agree)."""
    import onnxprune.runtime.bench as bench_module
    import onnxprune.runtime.paired_timing as paired_module

    real, real_pair = bench_module.benchmark, paired_module.time_pair

    def as_slow(r, base):
        return dataclasses.replace(r, speedup=speedup, slower=speedup < 1, p50_ms=base.p50_ms / speedup,
                                   times_ms=tuple(t / speedup for t in base.times_ms))

    def timed(*args, **kwargs):
        report = real(*args, **kwargs)
        base = {(r.provider, r.batch): r for r in report.results if r.model == "original"}
        results = tuple(as_slow(r, base[(r.provider, r.batch)]) if r.model == "pruned" else r
                        for r in report.results)
        return dataclasses.replace(report, results=results)

    def paired(*args, **kwargs):
        base, _, seconds = real_pair(*args, **kwargs)
        return base, [t / speedup for t in base], seconds

    monkeypatch.setattr(bench_module, "benchmark", timed)
    monkeypatch.setattr(paired_module, "time_pair", paired)


def test_a_slower_pruned_model_kept_by_allow_slower_is_called_slower(tmp_path, capsys, monkeypatch) -> None:
    """As it really was on the digits CNN (0.63x)."""
    _as_if_pruned_ran_at(monkeypatch, 0.63)
    out, err = _prune(tmp_path, capsys, MLP, "--no-validate", "--bench", "--runs", "5", "--warmup", "0",
                      "--batch", "1", "--round-to", "1", "--allow-slower")
    assert re.search(r"0\.63x \(ideal [\d.]+x\) SLOWER", out), out  # after the retry at round-to 16
    assert "WARNING: the pruned model is SLOWER than the original (cpu batch 1: 0.63x" in err
    assert "kept because of --allow-slower" in err


def test_a_tie_within_the_margin_is_not_called_slower(tmp_path, capsys, monkeypatch) -> None:
    """ShuffleNetV2 x0.5 at 0.5 ran 0.97x (95% 0.967-0.980) and was kept as not slower, under a warning that called
    it SLOWER: the console now says what the check decided, and still gives the hint for a speedup."""
    _as_if_pruned_ran_at(monkeypatch, 0.98)
    out, err = _prune(tmp_path, capsys, MLP, "--no-validate", "--bench", "--runs", "5", "--warmup", "0",
                      "--batch", "1", "--round-to", "1")
    assert "0.98x (ideal 1.66x) tie (within the margin)" in out and "SLOWER" not in out + err
    assert "no faster than the original (cpu batch 1: 0.98x), within the 3% margin that counts as a tie" in err
    assert "try a larger --round-to than 1" in err


def test_latency_prediction_and_retry_reach_the_console() -> None:
    from onnxprune.cli.summary import latency_lines

    report = {"settings": {"round_to": 16}, "speed": {"retried": True},
              "latency": {"prediction": [{"batch": 1, "predicted_speedup": 1.2, "measured_speedup": 1.1,
                                          "error": -0.0833}, {"batch": 8, "predicted_speedup": 1.5}]}}
    lines = latency_lines(report)
    assert "batch 1: predicted 1.20x, measured 1.10x (error -8%)" in lines[0]
    assert lines[1].strip() == "batch 8: predicted 1.50x"
    assert "retried with --round-to 16" in lines[2]
    assert latency_lines({}) == []
