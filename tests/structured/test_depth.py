"""Depth: residual branches ``y = x + f(x)`` found from dataflow and removed (``y = x``).

The oracle: the pruned model equals the original with each removed branch's last projection (weight and
bias) and the zero-preserving tail after it zeroed, in onnxruntime, at several batch sizes; the removed
model passes the full checker and loses exactly the branch's parameters.
"""

from __future__ import annotations

from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from oracle_check import assert_close, run_ort, seeded_feeds

from onnxprune.core.errors import ConfigError
from onnxprune.core.io import load_model
from onnxprune.core.stats import count_params
from onnxprune.structured.depth import choose_branches, depth_reference, remove_branches, residual_branches

MODELS = Path(__file__).resolve().parents[2] / "models"


def _prove(model: onnx.ModelProto, branches) -> onnx.ModelProto:
    before = model.SerializeToString()
    pruned = remove_branches(model, branches)
    reference = depth_reference(model, branches)
    onnx.checker.check_model(pruned, full_check=True)
    assert [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]
    for batch in (1, 3):
        feeds = seeded_feeds(model, batch, dims={d: batch for d in ("B", "batch", "N")})
        assert_close(run_ort(pruned, feeds), run_ort(reference, feeds), 1e-5, f"batch {batch}")
    assert model.SerializeToString() == before, "the input model was modified"
    return pruned


def test_ffn_and_attention_branches_are_found_and_removed() -> None:
    for model in (builders.transformer_ffn(), builders.attention_block(heads=2, runtime_target=True)):
        (branch,) = residual_branches(model)
        assert branch.output == "out"
        pruned = _prove(model, [branch])
        assert [n.op_type for n in pruned.graph.node] == ["Identity"]  # the whole branch went


@pytest.mark.parametrize("name", ["digits_transformer", "tv_vit_b_16", "tv_resnet18", "tv_convnext_tiny"])
def test_every_branch_of_real_models_removes_exactly(name: str) -> None:
    model = load_model(MODELS / f"{name}.onnx")
    branches = residual_branches(model)
    expected = {"digits_transformer": 4, "tv_vit_b_16": 8, "tv_resnet18": 5, "tv_convnext_tiny": 18}[name]
    assert len(branches) == expected
    for count in (1, 2):
        chosen = choose_branches(branches, count)
        assert sorted(b.score for b in chosen) == sorted(b.score for b in branches)[:count]
        pruned = _prove(model, chosen)
        assert count_params(pruned) < count_params(model)


def test_a_stream_with_a_downsampling_shortcut_is_no_branch() -> None:
    """ResNet's downsampling blocks add a projected shortcut: neither side reads only the other."""
    model = load_model(MODELS / "tv_resnet18.onnx")
    found = {b.add for b in residual_branches(model)}
    assert not any("layer2.0" in a or "layer3.0" in a or "layer4.0" in a for a in found)


def test_a_branch_ending_in_a_nonlinearity_that_moves_zero_is_not_removable() -> None:
    model = builders.transformer_ffn(erf_gelu=False)
    ffn_out = [n for n in model.graph.node if n.name == "residual"][0].input[1]
    producer = [n for n in model.graph.node if ffn_out in n.output][0]
    producer.output[0] = "pre"
    model.graph.node.append(onnx.helper.make_node("Sigmoid", ["pre"], [ffn_out], name="squash"))
    assert residual_branches(model) == []


def test_too_many_blocks_is_refused() -> None:
    branches = residual_branches(builders.transformer_ffn())
    with pytest.raises(ConfigError, match="has 1 removable"):
        choose_branches(branches, 2)


def test_consecutive_blocks_removed_together_chain_the_stream() -> None:
    """y1 = x + f(x); y2 = y1 + g(y1): removing both leaves y2 = x."""
    g = builders.GraphBuilder(0)
    y = "x"
    for _ in range(3):
        h = g.op("Relu", [g.op("MatMul", [y, g.weight((8, 16))])])
        y = g.op("Add", [y, g.op("Add", [g.op("MatMul", [h, g.weight((16, 8))]), g.weight((8,), "b")])])
    g.nodes.append(onnx.helper.make_node("MatMul", [y, g.weight((8, 3))], ["out"], name="head"))
    model = g.build([builders.vinfo("x", ["B", 8])], [builders.vinfo("out", ["B", 3])])
    branches = residual_branches(model)
    assert len(branches) == 3
    pruned = _prove(model, branches)
    assert [n.op_type for n in pruned.graph.node] == ["MatMul"]
    np.testing.assert_array_equal(pruned.graph.node[0].input[0], "x")


def test_a_macs_budget_removes_the_fewest_lowest_scored_blocks_exactly() -> None:
    from onnxprune.core.stats import model_stats
    from onnxprune.structured.depth import choose_for_macs

    model = load_model(MODELS / "digits_transformer.onnx")
    branches = residual_branches(model)
    macs = model_stats(model).macs
    one = model_stats(remove_branches(model, choose_branches(branches, 1))).macs / macs
    two = model_stats(remove_branches(model, choose_branches(branches, 2))).macs / macs
    assert two < one < 1.0
    for target, count in ((1.0, 0), (one, 1), ((one + two) / 2, 2)):
        chosen, share = choose_for_macs(model, branches, target)
        assert chosen == choose_branches(branches, count) and share <= target
        if chosen:
            assert model_stats(_prove(model, chosen)).macs / macs == pytest.approx(share)
    scores = [-b.score for b in branches]  # another order (as block influence gives) is followed
    first = choose_branches(branches, 1, scores=scores)
    assert first != choose_branches(branches, 1)
    chosen, _ = choose_for_macs(model, branches, model_stats(remove_branches(model, first)).macs / macs, scores=scores)
    assert chosen == first
    everything = model_stats(remove_branches(model, branches)).macs / macs
    with pytest.raises(ConfigError, match=r"removing all 4 removable residual blocks keeps"):
        choose_for_macs(model, branches, everything / 2)
