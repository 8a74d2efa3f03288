"""Markdown report and plots (onnxprune.report.markdown, onnxprune.report.plots)."""

from __future__ import annotations

import sys

import pytest
from builders import mlp

from onnxprune.core.errors import ConfigError, OutputError
from onnxprune.report.markdown import render_markdown, write_markdown_report
from onnxprune.report.plots import plot_report
from onnxprune.runtime.bench import benchmark
from onnxprune.runtime.validate import validate_models


@pytest.fixture(scope="module")
def bench_dict():
    return benchmark([mlp(hidden=64), mlp(hidden=16)], names=["original", "pruned"], runs=2, warmup=0).to_dict()


@pytest.fixture(scope="module")
def validation_dict():
    return validate_models(mlp(), mlp(), samples=2).to_dict()


def test_markdown_report_from_sections(tmp_path, bench_dict, validation_dict):
    path = write_markdown_report(
        tmp_path / "r.md",
        settings={"ratio": 0.5, "exclude": ["fc|2"]},
        stats_before={"params": 1000, "macs": 4000},
        stats_after={"params": 500, "macs": 1000},
        groups=[{"id": 0, "size": 64, "kept": 16}],
        validation=validation_dict,
        bench=bench_dict,
    )
    text = path.read_text()
    for heading in ("# onnxprune report", "## Settings", "## Size", "## Groups pruned", "## Validation",
                    "## Benchmark"):
        assert heading in text
    assert "| macs | 4,000 | 1,000 | 0.250x (-75.0%) |" in text
    assert "fc\\|2" in text  # pipes in values cannot break the table
    assert "| 0 | 64 | 16 |" in text
    assert "**PASS**" in text
    assert "| pruned | cpu | 1 |" in text
    assert "alternately" in text


def test_markdown_report_from_a_prune_report_dict(validation_dict, bench_dict):
    slow = dict(bench_dict)
    slow["results"] = [dict(r) for r in bench_dict["results"]]
    slow["results"][1]["slower"] = True
    report = {"mode": "structured", "settings": {"ratio": 0.3}, "params_before": 10, "params_after": 7,
              "macs_before": 100, "macs_after": 50, "validation": {"exact": validation_dict, "drift": validation_dict},
              "bench": slow, "warnings": ["--exclude 'x' matched no layer"]}
    text = render_markdown(report=report)
    assert text.startswith("# onnxprune report (structured)")
    assert "### Exactness" in text and "### Drift from the original" in text
    assert "| params | 10 | 7 | 0.700x (-30.0%) |" in text
    assert "**SLOWER than the first model**" in text
    assert "## Warnings" in text and "matched no layer" in text
    assert "## Groups pruned" not in text  # no section for data that was not given


def test_markdown_report_refuses_a_missing_folder(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        write_markdown_report(tmp_path / "no" / "r.md", settings={"a": 1})


def test_plot_writes_an_image(tmp_path, bench_dict):
    pytest.importorskip("matplotlib")
    path = plot_report(tmp_path / "p.png", bench=bench_dict, layers={"fc1": (64, 16), "fc2": (10, 10)})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = plot_report(tmp_path / "p.svg", report={"layers": [{"name": "fc1", "before": 64, "after": 16}]})
    assert "<svg" in svg.read_text()
    # the structured report's groups serve as layers when no "layers" key is given
    groups = {"groups": [{"id": 3, "size_before": 64, "size_after": 32, "members": ["a"]}]}
    assert plot_report(tmp_path / "g.png", report=groups).stat().st_size > 0
    assert not list(tmp_path.glob(".*onnxprune-tmp"))


def test_plot_errors(tmp_path, bench_dict, monkeypatch):
    with pytest.raises(ConfigError, match="nothing to plot"):
        plot_report(tmp_path / "p.png")
    with pytest.raises(ConfigError, match="needs 'before' and 'after'"):
        plot_report(tmp_path / "p.png", layers=[{"name": "fc1"}])
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(ConfigError, match=r"pip install -e \"\.\[plot\]\""):
        plot_report(tmp_path / "p.png", bench=bench_dict)


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def test_drift_is_a_measurement_without_a_pass_fail_verdict():
    drift = validate_models(mlp(), mlp(seed=1), samples=2, report_only=True).to_dict()
    exact = validate_models(mlp(), mlp(), samples=2).to_dict()
    text = render_markdown(report={"mode": "structured", "validation": {"exact": exact, "drift": drift}})
    section = _section(text, "### Drift from the original")
    # the old report headed this "**PASS**" and marked every row "FAIL"
    assert "PASS" not in section and "FAIL" not in section
    assert "Measured, not enforced" in section and "worst output: cpu: 'out' cosine" in section
    assert "**PASS**" in _section(text, "### Exactness")


def test_groups_pruned_lists_only_cut_groups_by_name():
    groups = [{"id": 0, "name": "fc1 (+1)", "layers": ["fc1", "fc2"], "size_before": 32, "size_after": 24,
               "criterion": "l2"},
              {"id": 1, "name": "fc2 (+1)", "layers": ["fc2", "fc3"], "size_before": 6, "size_after": 6,
               "criterion": "l2"}]
    blocked = [{"id": 2, "name": "fc3", "size": 4, "reason": "'out' is a graph output"}]
    text = render_markdown(report={"mode": "structured", "settings": {"round_to": 8}, "groups": groups,
                                   "blocked": blocked})
    section = _section(text, "## Groups pruned")
    assert "| fc1 (+1) | fc1, fc2 | 32 | 24 | 75.0% | l2 |" in section
    assert "| 6 | 6 |" not in section  # a group left whole is not "pruned"
    assert "1 of 2 prunable groups were left unpruned (--round-to 8 rounds their cut up to the full width): " \
           "fc2 (+1)." in section
    assert "| fc3 | 4 | 'out' is a graph output |" in text


def test_prune_report_md_on_the_mlp_measures_drift_on_probabilities(tmp_path, capsys):
    from pathlib import Path

    from onnxprune.cli.main import main

    root = Path(__file__).resolve().parents[2]
    md = tmp_path / "r.md"
    assert main(["prune", str(root / "models" / "digits_mlp.onnx"), "-o", str(tmp_path / "p.onnx"), "-q",
                 "--report-md", str(md), "--eval-data", str(root / "models" / "digits_mlp_test.npz"),
                 "--round-to", "1"]) == 0  # the widths the figures below were measured at
    text = md.read_text()
    drift = _section(text, "### Drift from the original")
    assert "worst output: cpu: 'probabilities' cosine 0.9917, top-1 agree 98.33%, max|diff| 0.709" in drift
    assert "| cpu | label | int64 | - |" in drift and "not a drift measure" in drift
    assert "| top-1 | 98.33% | 96.67% | -1.67 pts |" in text
    assert "| MatMul (+1) | MatMul, MatMul1 | 128 | 90 | 70.3% | l2 |" in text


def test_plot_bars_are_named_by_layer(tmp_path, capsys):
    matplotlib = pytest.importorskip("matplotlib")
    from pathlib import Path

    from onnxprune.cli.main import main

    root = Path(__file__).resolve().parents[2]
    svg = tmp_path / "p.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # keep text as text, to read the labels back
        assert main(["prune", str(root / "models" / "digits_cnn.onnx"), "-o", str(tmp_path / "p.onnx"), "-q",
                     "--no-validate", "--plot", str(svg)]) == 0
    text = svg.read_text()
    assert "/features/features.0/Conv (+3)" in text
    assert "group 0" not in text


def test_markdown_states_the_tolerance_rule_of_each_validation():
    exact = validate_models(mlp(), mlp(), samples=2, scale="output").to_dict()
    text = render_markdown(report={"mode": "structured", "validation": {"exact": exact}})
    assert "(max|diff| <= atol + rtol * max|original| per output)" in text
