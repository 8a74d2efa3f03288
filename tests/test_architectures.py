"""Structured pruning on real architectures: what is prunable, what is blocked, and why.

``tests/test_models.py`` proves every committed model against the oracle at ratios 0.3 and 0.5 with the
exact parameter drop; this file pins the architecture-level claims: the feed-forward neurons of every
transformer / ConvNeXt / ViT block are prunable, ShuffleNet's branches are prunable once runtime shape
arithmetic is folded, and each structure that must stay whole (LayerNorm over the channel axis, a shape
read of the cut axis, the channel shuffle) is blocked with a reason that names it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
from oracle_check import assert_close, run_ort

from onnxprune.core.io import load_model
from onnxprune.core.ir import GraphIndex
from onnxprune.core.stats import count_params
from onnxprune.structured.analysis import ChannelGroup, DependencyGraph, analyze
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.prune import coverage, prune_structured

MODELS = Path(__file__).resolve().parents[1] / "models"

#: Coverage (share of weighted-layer MACs in prunable groups, ``structured.coverage``) the engine reaches
#: on each committed model; a rule change that loses ground fails here. What is left is explained by the
#: blocker tests below (graph input/output sides, LayerNorm over channels, channel shuffle); attention heads
#: are pruned by whole heads (tests/structured/test_attention.py).
COVERAGE_FLOOR = {
    "digits_cnn": 0.99, "digits_mlp": 0.74, "digits_transformer": 0.49, "tv_convnext_tiny": 0.35,
    "tv_densenet121": 0.80, "tv_efficientnet_b0": 0.95, "tv_googlenet": 0.79, "tv_mnasnet0_5": 0.95,
    "tv_mobilenet_v2": 0.95, "tv_mobilenet_v3_small": 0.88, "tv_regnet_x_400mf": 0.96, "tv_resnet18": 0.82,
    "tv_shufflenet_v2_x0_5": 0.54, "tv_squeezenet1_1": 0.81, "tv_vit_b_16": 0.45, "tiny_gpt": 0.47,
    "tiny_sbert": 0.49,
}


@functools.cache
def _analysed(name: str) -> tuple:
    model = load_model(MODELS / f"{name}.onnx")
    return model, analyze(model)


def _by_source(dg: DependencyGraph, pattern: str) -> list[ChannelGroup]:
    """Groups with a source (producing layer) whose node name matches ``pattern``."""
    return [g for g in dg.groups if any(re.search(pattern, c.node) for c in g.sources)]


def test_every_model_has_a_coverage_floor() -> None:
    assert sorted(COVERAGE_FLOOR) == sorted(p.stem for p in MODELS.glob("*.onnx"))


@pytest.mark.parametrize("name", sorted(COVERAGE_FLOOR))
def test_coverage_does_not_regress(name: str) -> None:
    model, dg = _analysed(name)
    assert coverage(model, dg, dict(dg.shapes)) >= COVERAGE_FLOOR[name]


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_transformer_feed_forward_neurons_are_cut(ratio: float) -> None:
    """Each encoder layer's FFN (MatMul -> Add -> Relu -> MatMul) loses ``round(ratio * 128)`` neurons, and
    the pruned model equals the zeroed original on real data."""
    model, dg = _analysed("digits_transformer")
    ffn = _by_source(dg, r"layers\.\d/linear1/MatMul")
    assert len(ffn) == 2 and all(g.prunable and g.size == 128 for g in ffn)
    assert all(any(re.search(r"linear2/MatMul", c.node) for c in g.sinks) for g in ffn)
    result = prune_structured(model, ratio=ratio, dg=dg)
    kept = 128 - int(np.floor(ratio * 128 + 0.5))
    pruned_index = GraphIndex(result.model)
    for g in ffn:
        assert len(result.plan.keep[g.id]) == kept
        for cut in g.sources + g.sinks:
            assert pruned_index.const_shape(cut.tensor)[cut.axis] == kept  # type: ignore[index]
    assert count_params(model) - count_params(result.model) == dg.params_removed(result.plan.keep)
    data = np.load(MODELS / "digits_transformer_calib.npz")
    feeds = {"tokens": data["tokens"][:64]}
    assert_close(run_ort(result.model, feeds), run_ort(zeroed_reference(model, dg, result.plan), feeds), tol=1e-5)


def test_transformer_blocked_groups_say_why() -> None:
    _, dg = _analysed("digits_transformer")
    for g in _by_source(dg, r"linear2/MatMul"):  # d_model: the residual stream LayerNorm normalizes
        assert any(re.search(r"LayerNormalization.*normalizes over axis 2", b) for b in g.blockers), g.blockers
    qkv = _by_source(dg, r"self_attn/MatMul$")  # packed q/k/v projection: cut by whole heads (test_attention.py)
    assert len(qkv) == 2 and all(g.prunable and g.size == 4 for g in qkv)


def test_convnext_blocks_prune_their_mlp_and_keep_the_residual_stream() -> None:
    """torchvision's ConvNeXt block is dwconv -> NHWC LayerNorm -> Linear -> GELU -> Linear -> scale; the
    LayerNorm normalizes the channels of the residual stream (blocked, correctly), the MLP is prunable."""
    _, dg = _analysed("tv_convnext_tiny")
    mlp = _by_source(dg, r"block\.3/MatMul")
    assert len(mlp) == 18 and all(g.prunable for g in mlp)
    assert all(any(re.search(r"block\.5/MatMul", c.node) for c in g.sinks) for g in mlp)
    stream = _by_source(dg, r"block\.5/MatMul")
    assert stream and all(not g.prunable for g in stream)
    assert all(any(re.search(r"LayerNormalization.*normalizes over axis 3", b) for b in g.blockers) for g in stream)


def test_vit_mlp_groups_are_prunable() -> None:
    _, dg = _analysed("tv_vit_b_16")
    mlp = _by_source(dg, r"mlp\.0/MatMul")
    assert len(mlp) == 4 and all(g.prunable for g in mlp)


def test_shufflenet_branches_are_prunable_and_the_shuffle_is_blocked() -> None:
    """Every unit's inner branch (1x1 -> depthwise -> 1x1) is prunable: it needs the static shapes that
    folding the runtime ``chunk``/shuffle arithmetic gives. The channels that go through the shuffle are
    blocked: the shuffle splits and mixes the channel axis (its ``C // groups`` target entry, read at run time,
    follows the count, but the transpose between the two reshapes interleaves the groups)."""
    _, dg = _analysed("tv_shufflenet_v2_x0_5")
    inner = _by_source(dg, r"branch2\.0/Conv")
    assert len(inner) == 16 and all(g.prunable for g in inner)
    shuffled = _by_source(dg, r"branch2\.5/Conv")
    assert len(shuffled) >= 13 and all(not g.prunable for g in shuffled)
    assert all(any("(e.g. a channel shuffle); this cannot be cut exactly" in b for b in g.blockers) for g in shuffled)
