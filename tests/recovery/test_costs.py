"""CostModel counts a cut's MACs and parameters exactly as model_stats counts the cut model, recounting only
the weighted nodes whose shapes the cut changes."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.core.io import load_model
from onnxprune.core.stats import model_stats
from onnxprune.recovery.costs import CostModel
from onnxprune.structured.analysis import analyze
from onnxprune.structured.plan import PrunePlan, make_plan
from onnxprune.structured.surgery import apply_plan

# grouped convs (RegNetX), concat (DenseNet), attention and MatMul (GPT), plain CNN
MODELS = ["models/digits_cnn.onnx", "models/tv_regnet_x_400mf.onnx", "models/tiny_gpt.onnx",
          "models/tv_densenet121.onnx"]


def _only(plan: PrunePlan, groups: list[int]) -> PrunePlan:
    return PrunePlan(fingerprint=plan.fingerprint, keep={g: plan.keep[g] for g in groups},
                     sizes={g: plan.sizes[g] for g in groups}, criterion=plan.criterion, meta=plan.meta)


@pytest.mark.parametrize("path", MODELS)
def test_cost_equals_the_cut_models_stats(path):
    m = load_model(path)
    dg = analyze(m)
    costs = CostModel(m, dg)
    ids = [g.id for g in dg.prunable_groups if g.size > 1]
    rng = np.random.default_rng(0)
    checked = 0
    for ratio in (0.25, 0.75):
        plan = make_plan(m, dg, ratio=ratio)
        singles = [[int(g)] for g in rng.choice(ids, size=min(4, len(ids)), replace=False)]
        for groups in [*singles, sorted({*singles[0], *singles[-1]}), [g for g in plan.keep if g in ids]]:
            cut = _only(plan, groups)
            st = model_stats(apply_plan(m, cut, dg=dg))
            assert costs.cost(cut.keep) == (st.macs, st.params), (path, ratio, groups)
            checked += 1
    assert checked >= 8
    assert costs.cost({}) == (costs.base.macs, costs.base.params)  # nothing cut: the original's counts


def _kept_positions_everywhere(dg, keep):
    """The reference: every slot of the analysis scanned (what kept_positions did before it looked only at
    the slots of the cut groups)."""
    offsets = np.concatenate([[0], np.cumsum([g.size for g in dg.groups])]).astype(np.int64)
    root_kept = np.ones(int(offsets[-1]), dtype=bool)
    for gid, roots in keep.items():
        mask = np.zeros(dg.groups[gid].size, dtype=bool)
        mask[np.asarray(roots, dtype=np.int64)] = True
        root_kept[offsets[gid]:offsets[gid + 1]] = mask
    out = {}
    for slot, base in dg._base.items():
        pos = root_kept[offsets[dg._pos_group[base:base + dg.slot_sizes[slot]]]
                        + dg._pos_root[base:base + dg.slot_sizes[slot]]]
        if not pos.all():
            out[slot] = np.flatnonzero(pos)
    return out


@pytest.mark.parametrize("path", MODELS)
def test_kept_positions_scans_only_the_cut_groups_slots_and_finds_every_one(path):
    m = load_model(path)
    dg = analyze(m)
    rng = np.random.default_rng(1)
    groups = [g for g in dg.prunable_groups if g.size > 1]
    keeps = [{g.id: np.sort(rng.choice(g.size, size=max(1, g.size // 2), replace=False))} for g in groups[:6]]
    keeps.append({g.id: np.arange(g.size - 1) for g in groups})  # every group loses its last channel
    keeps.append({groups[0].id: np.arange(groups[0].size)})  # kept whole: nothing lost
    for keep in keeps:
        got, want = dg.kept_positions(keep), _kept_positions_everywhere(dg, keep)
        assert list(got) == list(want)  # same slots, same order
        for slot in want:
            np.testing.assert_array_equal(got[slot], want[slot])
