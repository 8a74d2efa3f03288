"""Property tests: random graphs of supported ops, random keep sets, always exact.

Hypothesis draws a chain of blocks (conv, residual, concat, split, squeeze-excitation, depthwise, pool,
slice) and a head (conv, pooled Gemm, flatten→Gemm, MatMul FFN over tokens) with random channel counts;
the analysis must never crash, and every random keep set must give a checker-valid model that passes the
zero-equivalence oracle with the exact predicted parameter drop. Derandomized so CI is reproducible.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from oracle_check import check_prune
from random_models import random_model


@settings(settings.get_profile("onnxprune"))
@given(random_model(), st.integers(0, 2**16))
def test_random_graphs_prune_exactly(drawn: tuple, seed: int) -> None:
    model, kinds, head = drawn
    dg, plan, pruned = check_prune(model, plan="random", seed=seed, evaluator=False)
    assert dg.groups[0].prunable, (kinds, head, dg.groups[0].blockers)
