"""Recovery of a grouped Conv cut inside its conv groups (``grouped_conv="within"``, the default).

Such a cut drops the same input positions of every conv group, so the layer loses inputs: ``sink_cuts`` lists
it (it used to skip it, saying its groups keep all their inputs) and recovery re-fits it group by group, from
each group's own Gram block (``lstsq``) or input means (``bias``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from builders import GraphBuilder, vinfo
from onnx import helper

from onnxprune.core.io import load_model
from onnxprune.recovery.calibrate import with_outputs
from onnxprune.recovery.recover import recover_structured, sink_cuts
from onnxprune.structured.analysis import analyze
from onnxprune.structured.plan import PrunePlan, make_plan
from onnxprune.structured.surgery import apply_plan

MODELS = Path(__file__).resolve().parents[2] / "models"


def _grouped(kernel: int, duplicate: bool) -> object:
    """x → Conv 1x1 (3→8) → Relu → grouped Conv (8→8, group 2, ``kernel``) → out. With ``duplicate``,
    channels 2, 3 of each conv group copy channels 0, 1 (so dropping them loses nothing a re-fit can't undo)."""
    g = GraphBuilder(5)
    w1 = g.r.standard_normal((8, 3, 1, 1)).astype(np.float32)
    if duplicate:
        w1[[2, 3, 6, 7]] = w1[[0, 1, 4, 5]]
    a = g.op("Relu", [g.op("Conv", ["x", g.const(w1, "w1")])])
    g.nodes.append(helper.make_node("Conv", [a, g.weight((8, 4, kernel, kernel)), g.weight((8,))], ["out"],
                                    name="grouped", group=2, pads=[kernel // 2] * 4))
    return g.build([vinfo("x", ["N", 3, 6, 6])], [vinfo("out", ["N", 8, 6, 6])])


def _plan(model):
    dg = analyze(model)
    (group,) = [g for g in dg.prunable_groups if g.size == 4]  # the 1x1 conv's outputs, tied across conv groups
    return dg, PrunePlan(fingerprint=dg.fingerprint, keep={group.id: np.array([0, 1])}, sizes={group.id: 4})


def _run(model, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _data(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((32, 3, 6, 6)).astype(np.float32)


def test_sink_cuts_lists_a_grouped_conv_cut_inside_its_groups():
    model = _grouped(3, duplicate=False)
    dg, plan = _plan(model)
    (cut,) = sink_cuts(model, dg, plan)
    assert cut.key == "grouped" and cut.keep_in.tolist() == [0, 1] and len(cut.keep_out) == 8


def test_lstsq_refits_each_conv_group_exactly():
    """Dropped channels copy kept ones in the same group: the per-group re-fit (no ridge) gives back the
    original output exactly, which leaving the layer as cut does not."""
    model = _grouped(3, duplicate=True)
    dg, plan = _plan(model)
    pruned = apply_plan(model, plan, dg=dg)
    x = _data()
    fixed = recover_structured(model, pruned, dg, plan, [{"x": x}], method="lstsq", ridge=0.0)
    want = _run(model, x)
    assert np.abs(_run(pruned, x) - want).max() > 0.1  # so the check below can fail
    np.testing.assert_allclose(_run(fixed, x), want, atol=1e-3)


def test_bias_restores_each_output_mean_of_a_grouped_1x1_conv():
    """1x1 grouped conv: the dropped inputs' mean contribution, per conv group, restores every output mean."""
    model = _grouped(1, duplicate=False)
    dg, plan = _plan(model)
    pruned = apply_plan(model, plan, dg=dg)
    x = _data()
    fixed = recover_structured(model, pruned, dg, plan, [{"x": x}], method="bias")
    want = _run(model, x).mean(axis=(0, 2, 3))
    assert np.abs(_run(pruned, x).mean(axis=(0, 2, 3)) - want).max() > 0.05
    np.testing.assert_allclose(_run(fixed, x).mean(axis=(0, 2, 3)), want, atol=1e-4)


def test_regnet_grouped_convs_are_refitted():
    """RegNetX-400MF (grouped 3x3 convs): lstsq recovery changes their weights and lowers their output error."""
    model = load_model(MODELS / "tv_regnet_x_400mf.onnx")
    dg = analyze(model)
    plan = make_plan(model, dg, ratio=0.3)
    pruned = apply_plan(model, plan, dg=dg)
    grouped = [c for c in sink_cuts(model, dg, plan) if c.node.op_type == "Conv"
               and any(a.name == "group" and a.i > 1 for a in c.node.attribute)]
    assert grouped
    feeds = {model.graph.input[0].name: np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)}
    fixed = recover_structured(model, pruned, dg, plan, [feeds], method="lstsq")
    names = [c.node.output[0] for c in grouped]
    outs = {}
    for tag, m in (("orig", model), ("cut", pruned), ("fixed", fixed)):
        sess = ort.InferenceSession(with_outputs(m, names).SerializeToString(), providers=["CPUExecutionProvider"])
        outs[tag] = sess.run(names, feeds)
    err = {t: sum(float(np.sum((a - b[:, c.keep_out]) ** 2)) for a, b, c in zip(outs[t], outs["orig"], grouped,
                                                                                 strict=True))
           for t in ("cut", "fixed")}
    assert err["fixed"] < 0.5 * err["cut"]
