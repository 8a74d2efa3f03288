"""The exactness rule judges each output against its own scale, and still catches a wrong cut.

A detection head's output mixes pixel boxes (~1e3) and near-zero values; float32 rounding of an exact cut is
relative to the large terms, so an element-relative rule fails a correct cut (seen on YOLO exports:
``max|diff|=0.00729 max rel=inf``). The per-output rule must pass that and fail one wrongly sliced channel.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import GraphBuilder, vinfo
from onnx import helper, numpy_helper

import onnxprune as op
from onnxprune.core.errors import ConfigError
from onnxprune.runtime.validate import compare_outputs, validate_models
from onnxprune.structured.analysis import analyze
from onnxprune.structured.axes import ChannelAxis
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.plan import make_plan
from onnxprune.structured.surgery import apply_plan


def large_head(seed: int = 0, c: int = 64, scale: float = 1000.0) -> onnx.ModelProto:
    """conv → relu → conv → relu → head conv whose outputs are ~``scale`` (pixel-like values, many near 0)."""
    g = GraphBuilder(seed)
    a = g.op("Relu", [g.conv("x", 3, c)])
    a = g.op("Relu", [g.conv(a, c, c)])
    w = g.const((g.r.standard_normal((8, c, 3, 3)) * scale / np.sqrt(c * 9)).astype(np.float32), "head_w")
    g.nodes.append(helper.make_node("Conv", [a, w], ["out"], name="head", pads=[1, 1, 1, 1]))
    return g.build([vinfo("x", [1, 3, 16, 16])], [vinfo("out", [1, 8, 16, 16])])


def _cut(model: onnx.ModelProto):
    dg = analyze(model)
    plan = make_plan(model, dg, ratio=0.5)
    return dg, plan, apply_plan(model, plan, dg=dg), zeroed_reference(model, dg, plan)


def test_output_scale_rule_and_the_tolerance_that_would_pass() -> None:
    ref = np.array([640.0, 0.0, 1e-3, 320.0])
    cand = ref + np.array([0.0, 0.02, -0.01, 0.01])
    assert not compare_outputs({"y": ref}, {"y": cand})  # element rule: 0.02 against |0| fails
    c = compare_outputs({"y": ref}, {"y": cand}, scale="output")  # 0.02 <= 1e-4 + 1e-3 * 640
    assert c and c.scale == "output" and c.to_dict()["rule"].startswith("max|diff| <= atol + rtol * max|original|")
    o = compare_outputs({"y": ref}, {"y": cand}, atol=0.0, rtol=1e-5, scale="output").output("y")
    assert not o.passed
    assert o.needed_atol == pytest.approx(0.02 - 1e-5 * 640)
    assert o.needed_rtol == pytest.approx(0.02 / 640)
    assert compare_outputs({"y": ref}, {"y": cand}, atol=0.0, rtol=o.needed_rtol * (1 + 1e-9), scale="output")
    assert not compare_outputs({"y": ref}, {"y": cand}, atol=0.0, rtol=o.needed_rtol * (1 - 1e-6), scale="output")
    with pytest.raises(ConfigError, match="tolerance scale must be one of element, output"):
        compare_outputs({"y": ref}, {"y": cand}, scale="channel")


def test_correct_cut_of_a_large_magnitude_output_passes_only_with_the_output_rule() -> None:
    model = large_head()
    _, _, pruned, reference = _cut(model)
    element = validate_models(reference, pruned)
    output = validate_models(reference, pruned, scale="output")
    diff = output.comparison("cpu").output("out").max_abs
    assert diff > 1e-4, "the model no longer shows rounding above atol; make its outputs larger"
    assert not element and output, (element.summary(), output.summary())
    assert output.to_dict()["scale"] == "output"


def test_pipeline_proves_a_correct_large_magnitude_cut_and_states_the_rule() -> None:
    result = op.prune(large_head(), op.PruneConfig(mode="structured", ratio=0.5))
    exact = result.report["validation"]["exact"]
    assert exact["passed"] and exact["scale"] == "output"
    assert exact["rule"] == "max|diff| <= atol + rtol * max|original| per output"
    assert "of each output's max|original|" in exact["summary"]


def test_one_wrongly_sliced_channel_in_a_large_magnitude_output_still_fails() -> None:
    model = large_head()
    dg, plan, pruned, reference = _cut(model)
    # The group feeding the head: keep one dropped filter in place of a kept one (a surgery off-by-one).
    gid = next(g.id for g in dg.prunable_groups if any(c.node == "head" for c in g.sinks))
    src = dg.groups[gid].sources[0]
    kept_pos = src.positions(plan.kept(gid))
    wrong_pos = src.positions(plan.dropped(gid))[0]
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for t in pruned.graph.initializer:
        if t.name == src.tensor:
            w = numpy_helper.to_array(t).copy()
            row = original[src.tensor][wrong_pos]
            in_kept = dg.kept_positions(plan.keep).get(ChannelAxis(src.tensor, 1))
            w[0] = row if in_kept is None else row[in_kept]
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    assert kept_pos[0] != wrong_pos
    report = validate_models(reference, pruned, scale="output")
    assert not report, report.summary()
    assert report.comparison("cpu").output("out").max_abs > 1.0


def test_the_pipeline_default_tolerance_catches_a_small_value_moved_beside_large_ones() -> None:
    """Per-output scale must not become a licence: with the pipeline's defaults (``PruneConfig().atol/rtol``),
    a score-sized error (0.1) in an output whose boxes reach 640 still fails. rtol 1e-3 would let it pass
    (640 * 1e-3 = 0.64), which is why the exactness default is 1e-4: 10x the rounding seen on YOLO heads
    (0.00729 / 640 = 1.1e-5)."""
    cfg = op.PruneConfig()
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.uniform(0, 640, (1, 4, 100)), rng.uniform(0, 1, (1, 80, 100))], axis=1)
    ref = ref.astype(np.float32)
    rounding = ref + (rng.standard_normal(ref.shape) * 1e-5 * 640).astype(np.float32)
    assert compare_outputs({"y": ref}, {"y": rounding}, atol=cfg.atol, rtol=cfg.rtol, scale="output")
    wrong = ref.copy()
    wrong[0, 10, :] += 0.1  # one score channel shifted: what a wrongly sliced channel looks like there
    assert not compare_outputs({"y": ref}, {"y": wrong}, atol=cfg.atol, rtol=cfg.rtol, scale="output")
