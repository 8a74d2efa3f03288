"""Elementwise rules: unary ops, broadcasting binary ops, PRelu slopes, GELU patterns, squeeze-excitation."""

from __future__ import annotations

import builders
import numpy as np
import pytest
from oracle_check import check_prune, first_group, prove_random_cuts, sandwich

UNARY = [
    ("Relu", {}, 17), ("LeakyRelu", {"alpha": 0.1}, 17), ("Elu", {}, 17), ("Selu", {}, 17), ("Celu", {}, 17),
    ("Sigmoid", {}, 17), ("HardSigmoid", {}, 17), ("HardSwish", {}, 17), ("Tanh", {}, 17), ("Softplus", {}, 17),
    ("Softsign", {}, 17), ("Erf", {}, 17), ("Exp", {}, 17), ("Neg", {}, 17), ("Abs", {}, 17), ("Sin", {}, 17),
    ("Cos", {}, 17), ("Floor", {}, 17), ("Ceil", {}, 17), ("Round", {}, 17), ("Sign", {}, 17),
    ("ThresholdedRelu", {}, 17), ("Shrink", {}, 17), ("Identity", {}, 17), ("Mish", {}, 18), ("Gelu", {}, 20),
    ("Dropout", {}, 17),
]


@pytest.mark.parametrize(("op", "attrs", "opset"), UNARY, ids=[u[0] for u in UNARY])
def test_unary_ops_pass_channels_through(op: str, attrs: dict, opset: int) -> None:
    model = sandwich(lambda g, y: g.op(op, [y], **attrs), opset=opset)
    _, group = first_group(model)
    assert group.prunable, group.blockers
    prove_random_cuts(model, seeds=range(2), evaluator=op not in ("Gelu", "Mish"))


def test_clip_with_scalar_bounds_and_cast() -> None:
    def middle(g, y):
        lo, hi = g.const(np.array(-0.5, np.float32)), g.const(np.array(0.5, np.float32))
        c = g.op("Clip", [y, lo, hi])
        return g.op("Cast", [g.op("Cast", [c], to=11)], to=1)

    prove_random_cuts(sandwich(middle))


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean"])
def test_binary_ops_with_per_channel_constant_slice_the_constant(op: str) -> None:
    def middle(g, y):
        return g.op(op, [y, g.weight((6, 1, 1), low=0.5)])

    dg, group = first_group(sandwich(middle))
    assert any(c.role == "param" and c.tensor.startswith("w") and c.op_type == op for c in group.cuts)
    prove_random_cuts(sandwich(middle))


@pytest.mark.parametrize("op", ["Add", "Mul", "Div", "Pow"])
def test_binary_ops_with_scalar_do_not_couple_it(op: str) -> None:
    def middle(g, y):
        base = g.op("Sigmoid", [y]) if op == "Pow" else y
        return g.op(op, [base, g.const(np.array([2.0], np.float32))])

    dg, group = first_group(sandwich(middle))
    assert not any(c.op_type == op for c in group.cuts)
    prove_random_cuts(sandwich(middle))


def test_prelu_per_channel_slope_is_sliced() -> None:
    model = sandwich(lambda g, y: g.op("PRelu", [y, g.weight((6, 1, 1))]))
    _, group = first_group(model)
    assert any(c.op_type == "PRelu" for c in group.cuts)
    prove_random_cuts(model)


@pytest.mark.parametrize("compare", ["Greater", "Less", "Equal", "LessOrEqual", "GreaterOrEqual"])
def test_where_and_compare_broadcast(compare: str) -> None:
    def middle(g, y):
        cond = g.op(compare, [y, g.const(np.zeros((6, 1, 1), np.float32))])
        return g.op("Where", [cond, y, g.op("Neg", [y])])

    prove_random_cuts(sandwich(middle))


@pytest.mark.parametrize("op", ["Log", "Sqrt", "Reciprocal"])
def test_ops_needing_positive_inputs(op: str) -> None:
    def middle(g, y):
        positive = g.op("Add", [g.op("Abs", [y]), g.const(np.array(1.0, np.float32))])
        return g.op(op, [positive])

    prove_random_cuts(sandwich(middle))


def test_branch_merge_of_two_layers_ties_them() -> None:
    def middle(g, y):
        other = g.conv("x", 3, 6)
        return g.op("Relu", [g.op("Add", [y, other])])

    dg, group = first_group(sandwich(middle))
    assert len(group.sources) == 2
    prove_random_cuts(sandwich(middle))


def test_broadcast_size_one_activation_does_not_couple() -> None:
    def middle(g, y):
        gate = g.conv("x", 3, 1, k=1)  # [1, 1, H, W] spatial gate from another layer
        return g.op("Mul", [y, g.op("Sigmoid", [gate])])

    dg, group = first_group(sandwich(middle))
    assert group.prunable and group.size == 6
    prove_random_cuts(sandwich(middle))


def test_squeeze_excitation_block() -> None:
    dg, plan, _ = check_prune(builders.squeeze_excite(), ratio=0.5)
    assert all(g.prunable for g in dg.groups[:2])
    prove_random_cuts(builders.squeeze_excite(seed=3))


@pytest.mark.parametrize("erf", [True, False])
def test_transformer_ffn_with_gelu_pattern(erf: bool) -> None:
    model = builders.transformer_ffn(erf_gelu=erf)
    dg, plan, _ = check_prune(model, ratio=0.5)
    hidden = dg.groups[0]
    assert hidden.prunable and hidden.size == 16 and plan.channels_removed == 8


def test_tanh_gelu_pattern() -> None:
    def middle(g, y):
        cube = g.op("Pow", [y, g.const(np.array(3.0, np.float32))])
        inner = g.op("Mul", [g.op("Add", [y, g.op("Mul", [cube, g.const(np.array(0.044715, np.float32))])]),
                             g.const(np.array(0.79788456, np.float32))])
        t = g.op("Add", [g.op("Tanh", [inner]), g.const(np.array(1.0, np.float32))])
        return g.op("Mul", [g.op("Mul", [y, t]), g.const(np.array(0.5, np.float32))])

    prove_random_cuts(sandwich(middle))


@pytest.mark.parametrize("check", ["IsNaN", "IsInf"])
def test_nan_guard_of_an_attention_softmax_passes_channels(check: str) -> None:
    """Hugging Face's SDPA export guards its softmax: ``Where(IsNaN(p), 0, p)`` (``Not`` of the test too)."""
    def middle(g, y):
        flag = g.op("Not", [g.op("Not", [g.op(check, [y])])])
        return g.op("Where", [flag, g.const(np.array(0.0, np.float32)), y])

    prove_random_cuts(sandwich(middle))
