"""Tests for onnxprune.sparse.sparsify: exact, deterministic unstructured and N:M sparsity.

The oracle is independent of the implementation (which uses np.partition): the expected pruned entries come
from a full stable argsort of |W| (or from a per-group loop for N:M), and the sparsified model must give the
same onnxruntime outputs as the *original* model with exactly those entries zeroed by hand.
"""

from __future__ import annotations

import builders
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import ModelProto, helper, numpy_helper

from onnxprune.core.errors import ConfigError
from onnxprune.sparse.sparsify import parse_layer_sparsity, parse_nm, sparsify, sparsify_nm


# -- helpers ---------------------------------------------------------------------------------------
def weights_of(model: ModelProto) -> dict[str, np.ndarray]:
    """Every initializer and Constant-node value by name."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def zero_by_hand(model: ModelProto, masks: dict[str, np.ndarray]) -> ModelProto:
    """A copy of ``model`` with the masked entries of the named tensors set to 0."""
    out = ModelProto()
    out.CopyFrom(model)
    tensors = list(out.graph.initializer) + [n.attribute[0].t for n in out.graph.node if n.op_type == "Constant"]
    for tensor in tensors:
        name = tensor.name or next(n.output[0] for n in out.graph.node
                                   if n.op_type == "Constant" and n.attribute[0].t is tensor)
        if name in masks:
            value = numpy_helper.to_array(tensor).copy()
            value[masks[name]] = 0
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    return out


def feeds_for(model: ModelProto, seed: int = 3) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value if d.HasField("dim_value") else 3 for d in vi.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = r.standard_normal(shape).astype(dtype)
    return feeds


def run(model: ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_same_outputs(a: ModelProto, b: ModelProto) -> None:
    feeds = feeds_for(a)
    for x, y in zip(run(a, feeds), run(b, feeds), strict=True):
        np.testing.assert_array_equal(x, y)


def argsort_mask(w: np.ndarray, k: int) -> np.ndarray:
    """The k entries smallest by (|w|, flat index), by a full stable sort."""
    order = np.argsort(np.abs(w.astype(np.float64)).ravel(), kind="stable")
    mask = np.zeros(w.size, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(w.shape)


def check_against_oracle(original: ModelProto, result, masks: dict[str, np.ndarray]) -> None:
    """Pruned entries are exactly ``masks``, survivors bit-identical, other tensors untouched, and
    onnxruntime outputs equal those of the original with the masked entries zeroed by hand."""
    before, after = weights_of(original), weights_of(result.model)
    assert set(before) == set(after)
    for name, old in before.items():
        new = after[name]
        assert new.dtype == old.dtype and new.shape == old.shape
        if name in masks:
            mask = masks[name]
            assert np.all(new[mask] == 0), name
            assert np.array_equal(bits(new[~mask]), bits(old[~mask])), name
        else:
            assert np.array_equal(bits(new), bits(old)), f"{name} must not change"
    assert_same_outputs(result.model, zero_by_hand(original, masks))
    onnx.checker.check_model(result.model, full_check=True)


# -- unstructured, layer scope ---------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.77, 0.95])
def test_layer_scope_is_exact_and_matches_oracle(sparsity):
    model = builders.conv_bn_relu()
    before = model.SerializeToString()
    result = sparsify(model, sparsity=sparsity)
    assert model.SerializeToString() == before  # input never mutated
    w = weights_of(model)
    masks = {name: argsort_mask(w[name], round(sparsity * w[name].size)) for name in ("w1", "w2")}
    for layer in result.layers:
        assert layer.zeros_after == round(sparsity * layer.numel)
        assert layer.zeros_before == 0 and layer.target == sparsity
    assert result.mode == "layer" and result.skipped == ()
    check_against_oracle(model, result, masks)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_is_kept_and_survivors_are_bit_identical(dtype):
    model = builders.gemm_stack(dtype=dtype)
    result = sparsify(model, sparsity=0.6)
    w = weights_of(model)
    masks = {name: argsort_mask(w[name], round(0.6 * w[name].size)) for name in ("g0_w", "g1_w", "bm_w")}
    check_against_oracle(model, result, masks)
    assert [layer.name for layer in result.layers] == ["g0_w", "g1_w", "bm_w"]


def test_ties_are_broken_by_flat_index():
    model = builders.mlp()
    for t in model.graph.initializer:
        if t.name == "fc1_w":
            t.CopyFrom(numpy_helper.from_array(np.full((32, 16), 0.25, np.float32), "fc1_w"))
    result = sparsify(model, sparsity=0.3, exclude=["fc2"])
    k = round(0.3 * 512)
    new = weights_of(result.model)["fc1_w"].ravel()
    assert np.all(new[:k] == 0) and np.all(new[k:] == 0.25)
    again = sparsify(model, sparsity=0.3, exclude=["fc2"])
    assert again.model.SerializeToString() == result.model.SerializeToString()


def test_already_zero_entries_count_as_pruned():
    model = builders.mlp()
    w = weights_of(model)["fc1_w"].copy()
    w.ravel()[7::5] = 0  # 102 zeros, scattered
    w.ravel()[3] = -0.0
    for t in model.graph.initializer:
        if t.name == "fc1_w":
            t.CopyFrom(numpy_helper.from_array(w, "fc1_w"))
    zeros = int(np.count_nonzero(w == 0))
    result = sparsify(model, sparsity=0.5, exclude=["fc2_w"])
    (layer,) = result.layers
    assert layer.zeros_before == zeros and layer.zeros_after == 256
    check_against_oracle(model, result, {"fc1_w": argsort_mask(w, 256)})
    # Asking for fewer zeros than there are already leaves the weight as it was.
    low = sparsify(model, sparsity=0.1, exclude=["fc2_w"])
    assert low.layers[0].zeros_after == zeros
    assert np.array_equal(bits(weights_of(low.model)["fc1_w"]), bits(w))


def test_shared_weight_is_pruned_once_and_bn_bias_untouched():
    model = builders.shared_weight_convs()
    result = sparsify(model, sparsity=0.5)
    (layer,) = result.layers
    assert layer.readers == ("conv_a", "conv_b") and layer.zeros_after == round(0.5 * 144)
    w = weights_of(model)["w"]
    check_against_oracle(model, result, {"w": argsort_mask(w, 72)})


def test_constant_node_weight_is_pruned():
    model = builders.constant_weight_mlp()
    result = sparsify(model, sparsity=0.4)
    (layer,) = result.layers
    assert layer.name == "cw" and layer.zeros_after == round(0.4 * 96)
    w = weights_of(model)["cw"]
    check_against_oracle(model, result, {"cw": argsort_mask(w, round(0.4 * 96))})


def test_misused_weights_are_reported_not_pruned():
    model = builders.weight_misused()
    result = sparsify(model, sparsity=0.5)
    assert [layer.name for layer in result.layers] == ["wk"]
    assert {s.name for s in result.skipped} == {"wa", "wo", "wi"}
    check_against_oracle(model, result, {"wk": argsort_mask(weights_of(model)["wk"], 18)})


def test_exclude_matches_node_and_weight_names_and_reports_unused_patterns():
    model = builders.gemm_stack()
    result = sparsify(model, sparsity=0.5, exclude=["gemm0", "bm_*", "nothing*"])
    assert [layer.name for layer in result.layers] == ["g1_w"]
    reasons = {s.name: s.reason for s in result.skipped}
    assert reasons == {"g0_w": "excluded by pattern 'gemm0'", "bm_w": "excluded by pattern 'bm_*'"}
    assert result.unmatched_exclude == ("nothing*",)
    g1 = weights_of(model)["g1_w"]
    check_against_oracle(model, result, {"g1_w": argsort_mask(g1, round(0.5 * g1.size))})


def test_layer_overrides_first_match_wins_and_unused_are_reported():
    model = builders.gemm_stack()
    result = sparsify(model, sparsity=0.5,
                      layer_sparsity={"gemm0": 0.2, "g*": 0.9, "bm_w": 0.0, "typo": 0.3})
    got = {layer.name: (layer.target, layer.zeros_after) for layer in result.layers}
    assert got == {"g0_w": (0.2, round(0.2 * 384)), "g1_w": (0.9, round(0.9 * 192)), "bm_w": (0.0, 0)}
    assert result.unmatched_layer_sparsity == ("typo",)


def test_min_size_leaves_small_weights_dense():
    model = builders.gemm_stack()  # g0_w 384, g1_w 192, bm_w 128 elements
    result = sparsify(model, sparsity=0.5, min_size=192)
    assert [layer.name for layer in result.layers] == ["g0_w", "g1_w"]
    assert result.skipped[0].name == "bm_w" and "fewer than min_size=192" in result.skipped[0].reason


def test_path_input_is_loaded(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(builders.mlp(), path)
    result = sparsify(path, sparsity=0.25)
    assert result.zeros_after == round(0.25 * 512) + round(0.25 * 320)


# -- unstructured, global scope --------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_global_scope_is_exact_over_all_weights(sparsity):
    model = builders.gemm_stack()
    result = sparsify(model, sparsity=sparsity, scope="global")
    w = weights_of(model)
    names = ["g0_w", "g1_w", "bm_w"]
    flat = np.concatenate([np.abs(w[n]).ravel() for n in names])
    k = round(sparsity * flat.size)
    assert result.zeros_after == k and result.mode == "global"
    chosen = np.zeros(flat.size, dtype=bool)
    chosen[np.argsort(flat, kind="stable")[:k]] = True
    masks, offset = {}, 0
    for n in names:
        masks[n] = chosen[offset : offset + w[n].size].reshape(w[n].shape)
        offset += w[n].size
    check_against_oracle(model, result, masks)


def test_global_scope_breaks_ties_across_weights_in_order():
    model = builders.mlp()
    for t in model.graph.initializer:
        if t.name in ("fc1_w", "fc2_w"):
            t.CopyFrom(numpy_helper.from_array(np.full(tuple(t.dims), -1.5, np.float32), t.name))
    result = sparsify(model, sparsity=0.75, scope="global")  # 624 of 832: all of fc1 (512) + first 112 of fc2
    fc1, fc2 = (weights_of(result.model)[n].ravel() for n in ("fc1_w", "fc2_w"))
    assert np.all(fc1 == 0)
    assert np.all(fc2[:112] == 0) and np.all(fc2[112:] == -1.5)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_global_scope_with_mixed_float16_and_float32(sparsity):
    model = builders.mixed_precision()
    result = sparsify(model, sparsity=sparsity, scope="global")
    w = weights_of(model)
    flat = np.concatenate([np.abs(w[n].astype(np.float64)).ravel() for n in ("w32", "w16")])
    k = round(sparsity * flat.size)
    chosen = np.zeros(flat.size, dtype=bool)
    chosen[np.argsort(flat, kind="stable")[:k]] = True
    masks = {"w32": chosen[:64].reshape(8, 8), "w16": chosen[64:].reshape(8, 8)}
    assert result.zeros_after == k
    check_against_oracle(model, result, masks)


def test_global_scope_with_override_prunes_the_rest_exactly():
    model = builders.gemm_stack()
    result = sparsify(model, sparsity=0.5, scope="global", layer_sparsity={"bm_w": 0.25})
    by = {layer.name: layer for layer in result.layers}
    assert by["bm_w"].zeros_after == 32
    assert by["g0_w"].zeros_after + by["g1_w"].zeros_after == round(0.5 * (384 + 192))


# -- scores hook -----------------------------------------------------------------------------------
def test_custom_scores_prune_lowest_scores_zeros_first():
    model = builders.mlp()
    w = weights_of(model)
    fc1 = w["fc1_w"].copy()
    fc1.ravel()[0] = 0  # an existing zero with the highest custom score is still pruned first
    for t in model.graph.initializer:
        if t.name == "fc1_w":
            t.CopyFrom(numpy_helper.from_array(fc1, "fc1_w"))
    scores = {"fc1_w": np.arange(512, dtype=np.float32)[::-1].reshape(32, 16).copy(),
              "fc2_w": np.ones((32, 10))}
    result = sparsify(model, sparsity=0.25, scores=scores)
    new = weights_of(result.model)
    expected = np.zeros(512, dtype=bool)
    expected[0] = True  # the zero counts as one of the 128 pruned
    expected[-127:] = True  # then the lowest custom scores, which are at the end
    assert np.array_equal(new["fc1_w"].ravel() == 0, expected)
    # All-equal scores: ties by flat index.
    assert np.all(new["fc2_w"].ravel()[:80] == 0) and np.all(new["fc2_w"].ravel()[80:] != 0)


def test_bad_scores_raise():
    model = builders.mlp()
    with pytest.raises(ConfigError, match="scores has no entry for weight 'fc2_w'"):
        sparsify(model, sparsity=0.5, scores={"fc1_w": np.ones((32, 16))})
    with pytest.raises(ConfigError, match=r"scores for weight 'fc1_w' have shape \(16, 32\)"):
        sparsify(model, sparsity=0.5, scores={"fc1_w": np.ones((16, 32)), "fc2_w": np.ones((32, 10))})
    nan = np.ones((32, 16))
    nan[0, 0] = np.nan
    with pytest.raises(ConfigError, match="'fc1_w' contain NaN"):
        sparsify(model, sparsity=0.5, scores={"fc1_w": nan, "fc2_w": np.ones((32, 10))})


# -- N:M -------------------------------------------------------------------------------------------
def rows_by_reduction(w: np.ndarray, layout: str) -> np.ndarray:
    """A 2-D view [outputs, reduction] written out per layout (independent of reduction_axes)."""
    if layout == "conv":
        return w.reshape(w.shape[0], -1)
    if layout == "gemm_nk":
        return w
    if layout == "gemm_kn":
        return w.T
    if layout == "bmm":
        return w.transpose(0, 2, 1).reshape(-1, w.shape[1])
    raise AssertionError(layout)


def nm_oracle_and_check(old: np.ndarray, new: np.ndarray, layout: str, n: int, m: int) -> np.ndarray:
    """Check every group of ``m`` keeps its ``n`` largest |w| (ties: lower index pruned); return the mask."""
    old_rows, new_rows = rows_by_reduction(old, layout), rows_by_reduction(new, layout)
    mask_rows = np.zeros(old_rows.shape, dtype=bool)
    for r in range(old_rows.shape[0]):
        for g in range(0, old_rows.shape[1], m):
            group = np.abs(old_rows[r, g : g + m].astype(np.float64))
            pruned = np.argsort(group, kind="stable")[: m - n]
            mask_rows[r, g + pruned] = True
            assert np.count_nonzero(new_rows[r, g : g + m] == 0) == m - n
    assert np.array_equal(new_rows == 0, mask_rows)
    return rows_back(mask_rows, layout, old.shape)


def rows_back(rows: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`rows_by_reduction`."""
    if layout == "gemm_kn":
        return rows.T
    if layout == "bmm":
        return rows.reshape(shape[0], shape[2], shape[1]).transpose(0, 2, 1)
    return rows.reshape(shape)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (3, 8)])
def test_nm_conv_groups_along_input_channels_times_kernel(n, m):
    model = builders.conv_bn_relu(c_in=8, c_mid=8)  # reduction 8*9=72, a multiple of 4 and 8
    result = sparsify_nm(model, n=n, m=m)
    assert result.mode == f"{n}:{m}"
    old, new = weights_of(model), weights_of(result.model)
    masks = {name: nm_oracle_and_check(old[name], new[name], "conv", n, m) for name in ("w1", "w2")}
    for layer in result.layers:
        assert layer.zeros_after == layer.numel * (m - n) // m and layer.target == (m - n) / m
    check_against_oracle(model, result, masks)


def test_nm_gemm_both_trans_b_and_batched_matmul():
    model = builders.gemm_stack()
    n, m = parse_nm("2:4")
    result = sparsify_nm(model, n=n, m=m)
    old, new = weights_of(model), weights_of(result.model)
    layouts = {"g0_w": "gemm_kn", "g1_w": "gemm_nk", "bm_w": "bmm"}
    masks = {name: nm_oracle_and_check(old[name], new[name], lay, 2, 4) for name, lay in layouts.items()}
    check_against_oracle(model, result, masks)


def test_nm_ties_prune_lower_index_first():
    model = builders.mlp()
    for t in model.graph.initializer:
        if t.name == "fc1_w":
            t.CopyFrom(numpy_helper.from_array(np.full((32, 16), 2.0, np.float32), "fc1_w"))
    result = sparsify_nm(model, n=2, m=4, exclude=["fc2"])
    new = weights_of(result.model)["fc1_w"].reshape(32, 4, 4)
    assert np.all(new[:, :, :2] == 0) and np.all(new[:, :, 2:] == 2.0)


def test_nm_skips_layers_whose_reduction_is_not_a_multiple_of_m():
    model = builders.conv_bn_relu()  # w1 reduction 3*9=27, w2 reduction 8*9=72
    result = sparsify_nm(model, n=2, m=4)
    assert [layer.name for layer in result.layers] == ["w2"]
    (skip,) = result.skipped
    assert skip.name == "w1" and "reduction size 27" in skip.reason and "not a multiple of M=4" in skip.reason
    masks = {"w2": nm_oracle_and_check(weights_of(model)["w2"], weights_of(result.model)["w2"], "conv", 2, 4)}
    check_against_oracle(model, result, masks)


def test_nm_skips_grouped_conv_transpose_and_honours_exclude():
    result = sparsify_nm(builders.conv_transpose(group=2), n=2, m=4)
    assert result.layers == () and "grouped ConvTranspose" in result.skipped[0].reason
    plain = sparsify_nm(builders.conv_transpose(), n=2, m=4)
    assert plain.layers[0].zeros_after == 8 * 4 * 9 // 2
    excluded = sparsify_nm(builders.mlp(), n=2, m=4, exclude=["fc1"], min_size=400)
    assert excluded.layers == ()
    assert [s.reason for s in excluded.skipped] == ["excluded by pattern 'fc1'",
                                                    "320 elements, fewer than min_size=400"]


# -- options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
        ({"sparsity": -0.1}, r"sparsity must be in \[0, 1\)"),
        ({"sparsity": float("nan")}, r"sparsity must be in \[0, 1\)"),
        ({"sparsity": "0.5"}, "sparsity must be a number"),
        ({"sparsity": True}, "sparsity must be a number"),
        ({"sparsity": 0.5, "scope": "model"}, "scope must be one of layer, global"),
        ({"sparsity": 0.5, "layer_sparsity": {"fc1": 1.5}}, r"layer sparsity for 'fc1' must be in \[0, 1\)"),
        ({"sparsity": 0.5, "layer_sparsity": {"": 0.5}}, "layer_sparsity pattern '' is not a non-empty string"),
        ({"sparsity": 0.5, "exclude": "fc1"}, "exclude must be a list of shell-style patterns"),
        ({"sparsity": 0.5, "exclude": ["fc1", 3]}, "exclude pattern 3 is not a non-empty string"),
        ({"sparsity": 0.5, "min_size": -1}, "min_size must be an integer >= 0"),
        ({"sparsity": 0.5, "min_size": 2.5}, "min_size must be an integer >= 0"),
    ],
)
def test_bad_options_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        sparsify(builders.mlp(), **kwargs)


def test_parse_layer_sparsity():
    assert parse_layer_sparsity(["conv1=0.2", "head.*=0", "a=b=0.5"]) == {"conv1": 0.2, "head.*": 0.0, "a=b": 0.5}
    with pytest.raises(ConfigError, match="'conv1' is not of the form 'pattern=fraction'"):
        parse_layer_sparsity(["conv1"])
    with pytest.raises(ConfigError, match="'=0.3' is not of the form"):
        parse_layer_sparsity(["=0.3"])
    with pytest.raises(ConfigError, match="'half' is not a number; write e.g. 'conv1=0.3'"):
        parse_layer_sparsity(["conv1=half"])
    with pytest.raises(ConfigError, match=r"--layer-sparsity 'conv1' must be in \[0, 1\)"):
        parse_layer_sparsity(["conv1=1"])


@pytest.mark.parametrize("spec", ["4:2", "0:4", "4:4", "2-4", "2:4:8", "a:b", ""])
def test_parse_nm_rejects(spec):
    with pytest.raises(ConfigError, match="N:M pattern"):
        parse_nm(spec)


def test_parse_nm_and_sparsify_nm_validation():
    assert parse_nm(" 2:4 ") == (2, 4)
    with pytest.raises(ConfigError, match="0 < n < m"):
        sparsify_nm(builders.mlp(), n=4, m=4)
    with pytest.raises(ConfigError, match="N:M n must be an integer"):
        sparsify_nm(builders.mlp(), n=2.0, m=4)


def test_global_threshold_compares_float16_against_float32_exactly():
    # float16(0.1) < float32(0.1): with k = 96 every float16 weight is below the threshold (0.1 as float32)
    # and 32 of the float32 weights tie with it. Comparing in float16 would turn the 64 into ties.
    model = builders.mixed_precision()
    for t in model.graph.initializer:
        dtype = np.float32 if t.name == "w32" else np.float16
        t.CopyFrom(numpy_helper.from_array(np.full((8, 8), 0.1, dtype), t.name))
    result = sparsify(model, sparsity=0.75, scope="global")
    new = weights_of(result.model)
    assert np.all(new["w16"] == 0)
    assert np.all(new["w32"].ravel()[:32] == 0) and np.all(new["w32"].ravel()[32:] == np.float32(0.1))


@pytest.mark.parametrize(("n", "m"), [(2, 4), (3, 8), (5, 16), (1, 32)])
def test_nm_heavy_ties_match_oracle_on_both_ranking_paths(n, m):
    # m <= 8 ranks by pairwise comparisons, larger m by argsort; both must order ties by index.
    model = builders.gemm_stack(d_in=32, hidden=32)
    r = np.random.default_rng(7)
    for t in model.graph.initializer:
        if t.name.endswith("_w"):
            value = r.choice(np.array([-2, -1, 1, 2], np.float32), tuple(t.dims))  # ties, no zeros
            t.CopyFrom(numpy_helper.from_array(value, t.name))
    result = sparsify_nm(model, n=n, m=m)
    old, new = weights_of(model), weights_of(result.model)
    layouts = {"g0_w": "gemm_kn", "g1_w": "gemm_nk", "bm_w": "bmm"}
    masks = {name: nm_oracle_and_check(old[name], new[name], layouts[name], n, m)
             for name in (layer.name for layer in result.layers)}
    assert set(masks) == ({"g0_w", "g1_w", "bm_w"} if m <= 8 else {"g0_w", "g1_w"})
    check_against_oracle(model, result, masks)


def test_nm_nan_weights_rank_last():
    model = builders.mlp()
    w = weights_of(model)["fc1_w"].copy()
    w[0, :4] = [np.nan, 0.5, np.nan, -0.1]
    for t in model.graph.initializer:
        if t.name == "fc1_w":
            t.CopyFrom(numpy_helper.from_array(w, "fc1_w"))
    new = weights_of(sparsify_nm(model, n=2, m=4, exclude=["fc2"]).model)["fc1_w"]
    assert np.isnan(new[0, 0]) and np.isnan(new[0, 2]) and new[0, 1] == 0 and new[0, 3] == 0


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, 2.0, -3.0, np.nan]), min_size=512, max_size=512),
    sparsity=st.floats(0.0, 0.99),
    scope=st.sampled_from(["layer", "global"]),
)
def test_property_selection_equals_stable_argsort(values, sparsity, scope):
    # Heavy ties, signed zeros and NaN: the partition-based selection must equal a full stable argsort.
    model = builders.mlp()
    w = np.array(values, np.float32).reshape(32, 16)
    for t in model.graph.initializer:
        if t.name == "fc1_w":
            t.CopyFrom(numpy_helper.from_array(w, "fc1_w"))
    result = sparsify(model, sparsity=sparsity, scope=scope, exclude=["fc2"])
    new = weights_of(result.model)["fc1_w"]
    mask = argsort_mask(w, round(sparsity * 512)) | (w == 0)
    assert np.array_equal(new == 0, mask)
    assert np.array_equal(bits(new[~mask]), bits(w[~mask]))  # NaN survivors keep their bits too
    assert result.layers[0].zeros_after == int(np.count_nonzero(mask))


def test_report_is_json_ready_and_consistent():
    import json

    result = sparsify(builders.weight_misused(), sparsity=0.5, exclude=["nope"], layer_sparsity={"typo": 0.1})
    report = json.loads(json.dumps(result.report()))
    assert report["sparsity"] == {"mode": "layer", "overall": 0.5, "numel": 36, "zeros_before": 0,
                                  "zeros_after": 18}
    assert report["layers"] == [{"name": "wk", "readers": ["mm_k"], "shape": [6, 6], "numel": 36,
                                  "zeros_before": 0, "zeros_after": 18, "target": 0.5, "sparsity": 0.5}]
    assert sorted(s["name"] for s in report["skipped"]) == ["wa", "wi", "wo"]
    assert result.unmatched_patterns == ("nope", "typo")
