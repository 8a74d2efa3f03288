"""Dead channels: silence a random half of every prunable group, prune at 0.5, and exactly those go.

For each torchvision export in ``models/`` (and a narrow ResNet-50 from ``tools/resnet50.py``), in two forms:
as exported (every layer its own tensors) and as a de-duplicating exporter stores it (zero biases and
BatchNormalization defaults shared by every layer of a width, ``exporter_sharing``):

1. draw, per prunable group, a random set of channels of the size a 0.5 cut removes (no layer emptied);
2. silence them the way the oracle does: zero their consumer-side weight slices;
3. prune the silenced model at ratio 0.5 with a consumer-side L2 criterion (silenced channels score 0);
4. assert that exactly the silenced channels were removed in every group, that the outputs are unchanged,
   and that the parameter count is the predicted one; for the shared form also that every layer reads
   constants of the shapes the per-layer cut of the as-exported form gave it (Torch-Pruning's DepGraph prunes
   each layer's own parameters), shared versions being stored once.

Before shared constants got one slot per reader, the shared form tied unrelated layers (SqueezeNet: 7
groups instead of 25) and step 4 failed.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from exporter_sharing import reset_to_init_values, share_identical_initializers
from oracle_check import assert_close, run_ort, seeded_feeds

from onnxprune.core.io import load_model
from onnxprune.core.stats import count_params
from onnxprune.structured.analysis import ChannelGroup, DependencyGraph, analyze
from onnxprune.structured.importance import ImportanceContext, member_mean, slice_norms
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.plan import PrunePlan, emptied_sources, make_plan
from onnxprune.structured.surgery import apply_plan

ROOT = Path(__file__).resolve().parents[2]
MODELS = ["tv_squeezenet1_1", "tv_efficientnet_b0", "tv_mobilenet_v3_small", "tv_densenet121",
          "tv_regnet_x_400mf", "tv_convnext_tiny", "tv_resnet18", "tv_mobilenet_v2", "resnet50_narrow"]


def resnet50_narrow() -> onnx.ModelProto:
    """tools/resnet50.py at 1/8 of every width, 32x32 inputs, 10 classes (the full layout, 53 convs)."""
    spec = importlib.util.spec_from_file_location("resnet50_tool", ROOT / "tools" / "resnet50.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    widths = {name: max(1, w // 8) for name, w in tool.standard_widths().items()}
    return tool.resnet50(seed=0, widths=widths, num_classes=10, image_size=32, batch=1)


def load(name: str) -> onnx.ModelProto:
    return resnet50_narrow() if name == "resnet50_narrow" else load_model(ROOT / "models" / f"{name}.onnx")


def consumer_l2(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    """L2 norm of a channel's consumer-side weight slices only: a silenced channel scores exactly 0."""
    return member_mean(group, ctx, lambda cut, w: slice_norms(w, cut.axis, 2), roles=("sink",), post=np.sqrt)


def silence_half(dg: DependencyGraph, seed: int) -> dict[int, np.ndarray]:
    """Per prunable group, the random roots a 0.5 cut would remove (as many as ``make_plan`` drops), leaving
    every layer at least one channel; groups without a consumer weight (nothing to silence) are left out."""
    r = np.random.default_rng(seed)
    drops: dict[int, np.ndarray] = {}
    for g in dg.prunable_groups:
        n_drop = g.size - max(g.size - math.floor(0.5 * g.size + 0.5), 1)
        if n_drop == 0 or not g.sinks:
            continue
        for _ in range(100):
            drop = np.sort(r.choice(g.size, size=n_drop, replace=False)).astype(np.int64)
            if not emptied_sources(g, np.setdiff1d(np.arange(g.size), drop)):
                break
        else:
            pytest.fail(f"group {g.id}: no random half leaves every layer a channel")
        drops[g.id] = drop
    return drops


def _plan(dg: DependencyGraph, drops: dict[int, np.ndarray]) -> PrunePlan:
    keep = {gid: np.setdiff1d(np.arange(dg.groups[gid].size), d) for gid, d in drops.items()}
    return PrunePlan(fingerprint=dg.fingerprint, keep=keep, sizes={gid: dg.groups[gid].size for gid in keep})


def prune_dead_half(model: onnx.ModelProto, drops: dict[int, np.ndarray] | None = None, seed: int = 0):
    """Silence, prune at 0.5 with ``consumer_l2``, and prove steps 3-4 of the module doc.

    Returns (dg, drops, silenced model, pruned model).
    """
    dg = analyze(model)
    drops = silence_half(dg, seed) if drops is None else drops
    silenced = zeroed_reference(model, dg, _plan(dg, drops))
    dg_s = analyze(silenced)
    assert dg_s.fingerprint == dg.fingerprint and [g.size for g in dg_s.groups] == [g.size for g in dg.groups]
    plan = make_plan(silenced, dg_s, ratio=0.5, importance=consumer_l2)
    for g in dg_s.prunable_groups:
        expected = drops.get(g.id, np.zeros(0, np.int64))
        if g.id in drops or len(plan.dropped(g.id)):
            assert g.id in drops, f"group {g.id} ({g.sources[0].node}) has nothing silenced but lost channels"
            np.testing.assert_array_equal(plan.dropped(g.id), expected, err_msg=f"group {g.id}")
    predicted = dg_s.params_removed(plan.keep)
    pruned = apply_plan(silenced, plan, dg=dg_s)
    onnx.checker.check_model(pruned, full_check=True)
    feeds = seeded_feeds(model)
    assert_close(run_ort(pruned, feeds), run_ort(silenced, feeds), 1e-4, "pruned vs silenced")
    assert count_params(silenced) - count_params(pruned) == predicted
    return dg, drops, silenced, pruned


def read_shapes(model: onnx.ModelProto) -> dict[tuple[str, int], tuple[int, ...]]:
    """Shape of every constant each node reads (through Identity), by (node's first output, input index)."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    out: dict[tuple[str, int], tuple[int, ...]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            while name in alias:
                name = alias[name]
            if name in shapes:
                out[(node.output[0], i)] = shapes[name]
    return out


@pytest.mark.parametrize("name", MODELS)
def test_pruning_at_half_removes_exactly_the_silenced_channels(name: str) -> None:
    original = load(name)
    dg, drops, _, pruned = prune_dead_half(original)
    assert drops, "nothing was silenced"
    if name == "tv_convnext_tiny":  # the residual stream is normalized by LayerNorm: blocked by design
        assert len(dg.prunable_groups) < len(dg.groups)
    # The same model as a de-duplicating exporter writes it: the same groups, the same channels go, and every
    # layer reads constants of exactly the shapes the per-layer cut above gave it (no layer tied to another).
    shared, folded = share_identical_initializers(reset_to_init_values(original))
    assert folded
    dg_shared, _, _, pruned_shared = prune_dead_half(shared, drops)
    assert len(dg_shared.prunable_groups) == len(dg.prunable_groups)
    assert read_shapes(pruned_shared) == read_shapes(pruned)
    assert count_params(pruned_shared) <= count_params(pruned)  # versions shared by readers are stored once
