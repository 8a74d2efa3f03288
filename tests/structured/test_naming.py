"""Groups are named by their layers, and ``analyze`` shows those names."""

from __future__ import annotations

from pathlib import Path

from builders import mlp3, residual_add

from onnxprune.cli.main import main
from onnxprune.structured.analysis import analyze
from onnxprune.structured.naming import group_layers, group_name
from onnxprune.structured.prune import prune_structured

ROOT = Path(__file__).resolve().parents[2]


def test_a_group_is_named_by_its_first_producer_and_how_many_more_layers_move() -> None:
    dg = analyze(mlp3())
    names = {g.id: group_name(g) for g in dg.groups}
    # fc1's 12 neurons feed fc2 and the skip layer: cutting them slices three layers.
    fc1 = next(g for g in dg.groups if group_layers(g)[0] == "fc1")
    assert group_layers(fc1) == ["fc1", "fc2", "skip"]
    assert names[fc1.id] == "fc1 (+2)"
    fc2 = next(g for g in dg.groups if group_layers(g)[0] == "fc2")
    assert names[fc2.id] == "fc2 (+1)"


def test_a_residual_group_counts_every_producer_and_consumer() -> None:
    dg = analyze(residual_add())
    for g in dg.groups:
        layers = group_layers(g)
        assert len(layers) == len(set(layers))
        if len(layers) > 1:
            assert group_name(g) == f"{layers[0]} (+{len(layers) - 1})"


def test_the_prune_report_carries_the_names() -> None:
    report = prune_structured(mlp3(), ratio=0.3).report
    assert [g["name"] for g in report["groups"]] == ["fc1 (+2)", "fc2 (+1)"]
    assert report["groups"][0]["layers"] == ["fc1", "fc2", "skip"]


def test_analyze_names_each_group(capsys) -> None:
    assert main(["analyze", str(ROOT / "models" / "digits_cnn.onnx"), "--groups"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("  group 0 "))
    assert "/features/features.0/Conv (+3)" in line and "32 channels" in line and "prunable" in line
    assert ("      layers: /features/features.0/Conv, /features/features.3/body/body.3/Conv, "
            "/features/features.3/body/body.0/Conv, /features/features.4/Conv") in out
