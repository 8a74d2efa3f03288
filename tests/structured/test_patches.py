"""Patches moved into and out of one axis (``onnxprune.structured.patches``): Swin's patch merging cuts the same
channels in every 2x2 neighbour (channel ``c`` is merged position ``p`` with ``p % C == c``), and MobileViT's
unfold/fold carries the channel as the leading factor of an axis whose rest is split off a spatial axis.

Exact structured cuts (a per-channel scale and shift instead of LayerNorm) are proven against the oracle in
onnxruntime and the reference evaluator with the exact parameter drop; width cuts (LayerNorm over the stream)
against the masked-norm reference (``tests/width_oracle.py``) at batch 1, 2 and 3, on the hand-built graphs and
on the real timm exports (skipped without the cache folder). What must stay blocked stays blocked with its
reason: a channels-last channel shuffle, a channels-last flatten with no split before it, a neighbour axis.
"""

from __future__ import annotations

import sys
from pathlib import Path

import builders
import numpy as np
import onnx
import patch_builders as pb
import pytest
from oracle_check import check_prune, first_group, prove_random_cuts, sandwich, seeded_feeds
from width_oracle import check_width_cut, stream_groups

from onnxprune.core.io import load_model
from onnxprune.core.ir import GraphIndex
from onnxprune.core.shapefold import infer_shapes
from onnxprune.structured.analysis import analyze
from onnxprune.structured.axes import ChannelAxis
from onnxprune.structured.patches import patch_merge, patch_merge_couplings
from onnxprune.structured.rules.base import Blocked, RuleContext
from onnxprune.structured.stream import stream_group_ids

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import real_exports_table as real  # noqa: E402

TARGETS = [pytest.param(False, id="constant-targets"), pytest.param(True, id="runtime-targets")]


def _group_of(model: onnx.ModelProto, dg, op_type: str = "Conv"):
    """The group of the first ``op_type``'s output channels (the stream the patches carry)."""
    node = next(n for n in model.graph.node if n.op_type == op_type)
    axis = 1 if op_type == "Conv" else len(dg.shapes[node.output[0]]) - 1
    (gid,) = dg.group_of(ChannelAxis(node.output[0], axis))
    return dg.groups[gid]


def _batches(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    return [seeded_feeds(model, seed=b, dims={"B": b}) for b in (1, 2, 3)]


# -- Swin's patch merging -------------------------------------------------------------------------------------
@pytest.mark.parametrize("runtime_target", TARGETS)
def test_a_merged_channel_is_the_same_position_of_every_neighbour(runtime_target: bool) -> None:
    c = 4
    model = pb.swin_merge(c=c, runtime_target=runtime_target)
    dg = analyze(model)
    g = _group_of(model, dg)
    assert g.prunable, g.blockers
    assert g.size == c
    (reduction,) = [s for s in g.sinks if s.tensor.startswith("reduction")]
    for i in range(c):
        assert reduction.positions(np.array([i])).tolist() == [i, c + i, 2 * c + i, 3 * c + i]


@pytest.mark.parametrize("runtime_target", TARGETS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patch_merge_cuts_match_the_oracle(runtime_target: bool, seed: int) -> None:
    model = pb.swin_merge(seed=seed, runtime_target=runtime_target)
    dg, plan, _ = check_prune(model, plan="random", seed=seed)
    check_prune(model, ratio=0.5)
    assert _group_of(model, dg).id in plan.keep


@pytest.mark.parametrize("runtime_target", TARGETS)
@pytest.mark.parametrize("seed", [0, 1])
def test_patch_merge_width_cut_matches_the_masked_norm_reference(runtime_target: bool, seed: int) -> None:
    """Width mode: the stream below the merge is cut with the 4C LayerNorm and the reduction's input rows."""
    model = pb.swin_merge(seed=seed, norm="layer", runtime_target=runtime_target)
    prep, dg, plan, pruned = check_width_cut(model, _batches(model), seed=seed)
    g = _group_of(prep, dg)
    assert g.id in stream_groups(prep, dg) and len(plan.keep[g.id]) < g.size
    ln = {n.input[1]: n for n in pruned.graph.node if n.op_type == "LayerNormalization"}
    widths = sorted(int(t.dims[0]) for t in pruned.graph.initializer if t.name in ln)
    kept = len(plan.keep[g.id])
    assert widths.count(4 * kept) == 1  # the merged axis' norm: every neighbour of the kept channels


# -- MobileViT's unfold and fold -------------------------------------------------------------------------------
def test_an_unfolded_channel_is_the_leading_factor_of_the_merged_axis() -> None:
    c, hw, patch = 4, 4, 2
    model = pb.mobilevit_unfold(c=c, hw=hw, patch=patch)
    dg = analyze(model)
    g = _group_of(model, dg)
    assert g.prunable, g.blockers
    assert g.size == c
    unfold = next(n for n in model.graph.node if n.op_type == "Reshape")
    member = g.members[ChannelAxis(unfold.output[0], 0)]  # [B*c*n, p, n, p]: channel i is rows i*n ... i*n+n-1
    n = hw // patch
    for i in range(c):
        assert member.forward(np.array([i])).tolist() == list(range(i * n, (i + 1) * n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unfold_and_fold_cuts_match_the_oracle(seed: int) -> None:
    model = pb.mobilevit_unfold(seed=seed)
    dg, plan, _ = check_prune(model, plan="random", seed=seed)
    assert _group_of(model, dg).id in plan.keep


@pytest.mark.parametrize("runtime_target", TARGETS)
def test_unfold_width_cut_matches_the_masked_norm_reference_at_every_batch(runtime_target: bool) -> None:
    """The legacy exporter's ``B*c*n`` entry (``Mul`` of two shape reads, the channel frozen to a constant by
    width mode) becomes ``-1``: the cut model runs at batch 2 and 3 too."""
    model = pb.mobilevit_unfold(norm="layer", runtime_target=runtime_target)
    prep, dg, plan, _ = check_width_cut(model, _batches(model))
    g = _group_of(prep, dg)
    assert g.id in stream_groups(prep, dg) and len(plan.keep[g.id]) < g.size


def test_a_channel_axis_split_into_leading_pairs_is_cut_by_pairs() -> None:
    """``(1, 6, 5, 5) -> (1, 3, 50)``: channel pair ``j`` is position ``j`` of the merged axis, read back as
    ``Shape(y)[1] / 2`` at run time; whole pairs are cut, exactly."""
    def middle(g, y):
        shape = g.op("Shape", [y])
        half = g.op("Div", [g.op("Slice", [shape, g.const(np.array([1], np.int64)), g.const(np.array([2], np.int64))]),
                            g.const(np.array([2], np.int64))])
        target = g.op("Concat", [g.const(np.array([1], np.int64)), half, g.const(np.array([-1], np.int64))], axis=0)
        return g.op("Reshape", [g.op("Reshape", [y, target]), g.const(np.array([1, 6, 5, 5], np.int64))])

    model = sandwich(middle)
    _, grp = first_group(model)
    assert grp.prunable and grp.size == 3, grp.blockers
    prove_random_cuts(model)


# -- what stays blocked ------------------------------------------------------------------------------------------
def _channels_last(middle, c: int = 6, t: int = 4) -> onnx.ModelProto:
    """x [1, t, t, 3] → MatMul to c channels (last) → ``middle`` → MatMul (c → 4)."""
    g = builders.GraphBuilder(0)
    y = g.op("MatMul", ["x", g.weight((3, c))])
    z = middle(g, y)
    g.nodes.append(onnx.helper.make_node("MatMul", [z, g.weight((c if middle is not _flatten else c * t * t, 4))],
                                         ["out"], name="sink"))
    out = [1, 4] if middle is _flatten else [1, t, t, 4]
    return g.build([builders.vinfo("x", [1, t, t, 3])], [builders.vinfo("out", out)])


def _shuffle(g, y):
    r = g.op("Reshape", [y, g.const(np.array([1, 4, 4, 2, 3], np.int64))])
    t = g.op("Transpose", [r], perm=[0, 1, 2, 4, 3])
    return g.op("Reshape", [t, g.const(np.array([1, 4, 4, 6], np.int64))])


def _flatten(g, y):
    return g.op("Reshape", [y, g.const(np.array([1, -1], np.int64))])


def test_a_channels_last_shuffle_is_no_patch_merge() -> None:
    """Its merged innermost axis is a piece of the channel split, not a channel kept whole: blocked, as before."""
    dg = analyze(_channels_last(_shuffle))
    g = dg.groups[0]
    assert not g.prunable and "channel shuffle" in " ".join(g.blockers), g.blockers


def test_a_channels_last_flatten_with_no_split_before_stays_blocked() -> None:
    """``[1, t, t, C] -> [1, t*t*C]``: nothing says the leading axes are not channels (an NCHW flatten looks the
    same), so the innermost reading is not taken: blocked with its reason."""
    dg = analyze(_channels_last(_flatten))
    g = dg.groups[0]
    assert not g.prunable and "splits or mixes axis 3" in " ".join(g.blockers), g.blockers


def test_a_neighbour_axis_of_a_patch_merge_is_refused_with_its_reason() -> None:
    model = pb.swin_merge(norm=None)
    merge = [n for n in model.graph.node if n.op_type == "Reshape"][-1]
    ctx = RuleContext(GraphIndex(model), infer_shapes(model))
    assert patch_merge_couplings(merge, 5, False, ctx) is not None  # the channel axis
    for neighbour in (3, 4):
        with pytest.raises(Blocked, match=rf"axis {neighbour} of .* is a neighbour offset of a patch merge"):
            patch_merge_couplings(merge, neighbour, False, ctx)


# -- the real timm exports (skipped without the cache folder) --------------------------------------------------------
def _real(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict]:
    path = real.export_dir() / f"{name}.onnx"
    inputs = path.with_suffix(".inputs.npz")
    if not path.is_file() or not inputs.is_file():
        pytest.skip(f"no {path.name} with its inputs in {path.parent} (tools/export_real.py writes it)")
    from onnxprune.runtime.dims import resolve_dims

    model = load_model(path)
    return model, dict(np.load(inputs)), resolve_dims(model, required=False).dims


@pytest.mark.parametrize("name", ["timm_swin_tiny", "timm_mobilevit_xxs"])
def test_real_export_stream_coverage_without_interface_is_at_least_0_9(name: str) -> None:
    from onnxprune.recovery.stream_view import width_view

    model, _, dims = _real(name)
    view = width_view(model, dims=dims)
    assert view["coverage_without_interface"] >= 0.9, view["uncovered"][:3]


@pytest.mark.parametrize("name", ["timm_swin_tiny", "timm_mobilevit_xxs"])
def test_real_export_width_cut_matches_the_masked_norm_reference(name: str) -> None:
    model, feeds, dims = _real(name)
    twice = {k: np.concatenate([v, v[::-1] * 0.5]) for k, v in feeds.items()}
    prep, dg, plan, _ = check_width_cut(model, [feeds, twice], dims=dims)
    streams = stream_groups(prep, dg)
    assert streams == stream_group_ids(prep, dg)  # every stage's stream is cut, none blocked
    assert len(streams) == (4 if name == "timm_swin_tiny" else 3)
    assert all(len(plan.keep[g]) < dg.groups[g].size for g in streams)
    ctx = RuleContext(GraphIndex(prep), dict(dg.shapes))
    merges = [n for n in prep.graph.node if n.op_type == "Reshape" and patch_merge(n, ctx)]
    assert len(merges) == (3 if name == "timm_swin_tiny" else 0)


def test_the_masked_norm_reference_catches_another_cut() -> None:
    """The width oracle is not vacuous: the same cut against another keep set's reference, or against the
    structured oracle (norms over every channel), differs."""
    from oracle_check import run_ort
    from width_oracle import half_plan, masked_norm_reference

    from onnxprune.structured.oracle import zeroed_reference

    model = pb.swin_merge(norm="layer")
    feed = seeded_feeds(model, dims={"B": 2})
    prep, dg, plan, pruned = check_width_cut(model, [feed])
    got = run_ort(pruned, feed)[0]
    other = next(p for p in (half_plan(dg, s) for s in range(1, 9))
                 if any(not np.array_equal(p.keep[g], plan.keep[g]) for g in plan.keep))
    for wrong in (masked_norm_reference(prep, dg, other), zeroed_reference(prep, dg, plan)):
        assert np.max(np.abs(run_ort(wrong, feed)[0] - got)) > 1e-3
