"""The high-level entry: prune_structured and its report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import builders
import onnx
import pytest
from oracle_check import assert_equivalent

from onnxprune.core.errors import ConfigError
from onnxprune.core.stats import count_params
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.prune import prune_structured

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))


def test_report_is_json_and_consistent() -> None:
    model = builders.residual_add()
    result = prune_structured(model, ratio=0.5)
    report = json.loads(json.dumps(result.report))
    assert {"groups", "blocked", "coverage", "params_removed"} <= set(report)
    assert report["params_removed"] == count_params(model) - count_params(result.model)
    for g in report["groups"]:
        assert g["size_after"] == len(result.plan.keep[g["id"]]) and g["criterion"] == "l2"
    assert report["blocked"] and all(b["reason"] for b in report["blocked"])
    assert 0.5 < report["coverage"] <= 1.0
    assert_equivalent(model, result.model, zeroed_reference(model, result.dg, result.plan))


def test_coverage_counts_both_sides_of_each_layer() -> None:
    # conv1: input side blocked (graph input), output side prunable; conv2: input prunable, output blocked.
    result = prune_structured(builders.conv_bn_relu(), ratio=0.5)
    assert result.report["coverage"] == pytest.approx(0.5)


def test_given_plan_is_reused(tmp_path) -> None:
    model = builders.squeeze_excite()
    first = prune_structured(model, ratio=0.5, importance="fpgm")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    again = prune_structured(path, ratio=0.1, plan=first.plan)
    assert again.model.SerializeToString() == first.model.SerializeToString()


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="ratio"):
        prune_structured(builders.mlp(), ratio=1.5)


@pytest.mark.slow
def test_narrow_resnet50_is_equivalent_after_cut() -> None:
    from bench_structured import resnet

    model = resnet(width=4, classes=10)
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_value = 32
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    result = prune_structured(model, ratio=0.5, global_rank=True)
    assert len(result.dg.prunable_groups) == len(result.dg.groups) - 1
    assert result.report["coverage"] > 0.8  # stem input and classifier output stay
    assert_equivalent(model, result.model, zeroed_reference(model, result.dg, result.plan), evaluator=False)
