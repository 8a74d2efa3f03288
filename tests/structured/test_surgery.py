"""Surgery: every cut is proven against the zero-equivalence oracle and the exact parameter count."""

from __future__ import annotations

import builders
import numpy as np
import onnx
import pytest
from oracle_check import check_prune, random_plan

from onnxprune.core.errors import PlanError
from onnxprune.core.stats import model_stats
from onnxprune.structured.analysis import analyze
from onnxprune.structured.plan import PrunePlan, make_plan
from onnxprune.structured.surgery import apply_plan

BUILDERS = ["conv_bn_relu", "mlp", "residual_add", "concat_split", "flatten_gemm", "depthwise", "squeeze_excite",
            "transformer_ffn"]


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_ranked_cut_is_equivalent(name: str, ratio: float) -> None:
    model = getattr(builders, name)()
    dg, plan, pruned = check_prune(model, ratio=ratio)
    assert plan.channels_removed > 0
    assert model_stats(pruned).params < model_stats(model).params


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("seed", range(3))
def test_random_keep_sets_are_equivalent(name: str, seed: int) -> None:
    check_prune(getattr(builders, name)(seed=seed), plan="random", seed=seed)


def test_weights_are_physically_sliced_and_no_gather_left() -> None:
    model = builders.conv_bn_relu(c_mid=8)
    _, plan, pruned = check_prune(model, ratio=0.5)
    weights = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert weights["w1"] == (4, 3, 3, 3) and weights["w2"] == (6, 4, 3, 3) and weights["gamma"] == (4,)
    assert [n.op_type for n in pruned.graph.node] == [n.op_type for n in model.graph.node]


def test_kept_channels_keep_their_exact_weights() -> None:
    model = builders.conv_bn_relu()
    dg = analyze(model)
    plan = PrunePlan(fingerprint=dg.fingerprint, keep={0: [1, 4, 6]}, sizes={0: 8})
    pruned = apply_plan(model, plan, dg=dg)
    w1 = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w1"))
    w1p = onnx.numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == "w1"))
    np.testing.assert_array_equal(w1p, w1[[1, 4, 6]])


def test_plan_for_another_model_is_refused() -> None:
    a, b = builders.conv_bn_relu(c_mid=8), builders.conv_bn_relu(c_mid=10)
    plan = make_plan(a, analyze(a), ratio=0.5)
    with pytest.raises(PlanError, match="another model"):
        apply_plan(b, plan)


def test_plan_cutting_a_blocked_group_is_refused() -> None:
    model = builders.conv_bn_relu()
    dg = analyze(model)
    blocked = next(g for g in dg.groups if not g.prunable)
    plan = PrunePlan(fingerprint=dg.fingerprint, keep={blocked.id: [0]}, sizes={blocked.id: blocked.size})
    with pytest.raises(PlanError, match="blocked"):
        apply_plan(model, plan, dg=dg)


def test_plan_with_out_of_range_index_is_refused() -> None:
    model = builders.conv_bn_relu()
    dg = analyze(model)
    plan = PrunePlan(fingerprint=dg.fingerprint, keep={0: [0, 99]}, sizes={0: 8})
    with pytest.raises(PlanError, match="outside"):
        apply_plan(model, plan)


def test_apply_plan_works_from_a_path(tmp_path) -> None:
    model = builders.residual_add()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    dg = analyze(model)
    plan = random_plan(model, dg, seed=1)
    pruned = apply_plan(path, plan)
    onnx.checker.check_model(pruned, full_check=True)
