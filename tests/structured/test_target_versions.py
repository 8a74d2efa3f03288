"""A reshape target shared by the head splits of several layers (the dynamo exporter de-duplicates them):
each layer's heads stay a group of their own, and the surgery writes one version of the target per distinct
head count, the first reader's version in place.

Every cut is proven against the oracle in onnxruntime and the reference evaluator, with the exact parameter
drop (``check_prune``), and the pruned models run at other batch sizes and sequence lengths.
"""

from __future__ import annotations

import attention_builders as ab
import numpy as np
import pytest
from onnx import numpy_helper
from oracle_check import check_prune, run_ort

from onnxprune.structured.analysis import analyze
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.plan import PrunePlan
from onnxprune.structured.surgery import apply_plan


def _head_groups(model):
    dg = analyze(model)
    heads = [g for g in dg.prunable_groups if len(g.sinks) == 1 and len(g.sources) == 3]
    return dg, heads


@pytest.mark.parametrize("head_count", ["constant", "inferred", "unsqueeze"])
def test_each_layer_keeps_its_own_head_group(head_count: str) -> None:
    dg, heads = _head_groups(ab.shared_target_layers(layers=2, head_count=head_count))
    assert len(heads) == 2 and all(g.size == 2 for g in heads), dg.summary()


@pytest.mark.parametrize("head_count", ["constant", "inferred", "unsqueeze"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_cuts_of_layers_sharing_a_target_match_the_oracle(head_count: str, seed: int) -> None:
    check_prune(ab.shared_target_layers(seed=seed, heads=4, d=16, layers=2, head_count=head_count),
                plan="random", seed=seed)


def _plan(dg, heads, keeps):
    return PrunePlan(fingerprint=dg.fingerprint, keep={g.id: np.array(k, np.int64) for g, k in zip(heads, keeps,
                                                                                                     strict=True)},
                     sizes={g.id: g.size for g in heads})


@pytest.mark.parametrize("head_count", ["constant", "unsqueeze"])
def test_layers_cut_differently_read_their_own_versions(head_count: str) -> None:
    """Layer 1 keeps 1 head of 4, layer 2 keeps 3, layer 3 keeps all: three versions of the split target (the
    original, edited for layer 1, its first reader; copies for layers 2 and 3) and three of the merge target."""
    model = ab.shared_target_layers(heads=4, d=16, layers=3, head_count=head_count)
    dg, heads = _head_groups(model)
    assert len(heads) == 3
    plan = _plan(dg, heads, [[2], [0, 1, 3], [0, 1, 2, 3]])
    pruned = apply_plan(model, plan, dg=dg)
    concats = [n for n in pruned.graph.node if n.op_type == "Concat"]
    inits = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    pieces = sorted(tuple(int(v) for v in inits[n.input[2]].reshape(-1)) for n in concats if n.input[2] in inits)
    if head_count == "constant":  # split head counts 1, 3, 4; merge widths 4, 12, 16
        assert pieces == [(1,), (3,), (4,), (4,), (12,), (16,)]
    else:  # the head counts sit behind copies of the Unsqueeze
        assert pieces == [(4,), (12,), (16,)]
        counts = sorted(int(inits[n.input[0]]) for n in pruned.graph.node if n.op_type == "Unsqueeze"
                        and n.input[0] in inits and inits[n.input[0]].ndim == 0)
        assert counts == [1, 3, 4]
    reference = zeroed_reference(model, dg, plan)
    for batch, seq in ((1, 3), (2, 5), (3, 9)):
        x = np.random.default_rng(seq).standard_normal((batch, seq, 16)).astype(np.float32)
        (got,), (want,) = run_ort(pruned, {"x": x}), run_ort(reference, {"x": x})
        assert got.shape == (batch, seq, 16)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_layers_cut_alike_share_one_version() -> None:
    model = ab.shared_target_layers(heads=4, d=16, layers=2)
    dg, heads = _head_groups(model)
    pruned = apply_plan(model, _plan(dg, heads, [[0, 3], [1, 2]]), dg=dg)
    assert sum(n.op_type == "Concat" for n in pruned.graph.node) == 2  # no copy: both layers keep 2 heads


def test_a_target_that_is_a_graph_output_stays_blocked() -> None:
    import onnx

    model = ab.shared_target_layers(layers=1)
    split = next(n for n in model.graph.node if n.op_type == "Concat" and len(n.input) == 4).output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(split, onnx.TensorProto.INT64, [4]))
    dg, heads = _head_groups(model)
    assert not heads
    assert any("is a graph output; rewriting its head count" in b for g in dg.groups for b in g.blockers)
