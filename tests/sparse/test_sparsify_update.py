"""The weight-update hook of sparsify (what SparseGPT plugs into) and the ``only`` subset: counts taken from
what is written, the count asked is magnitude's, declined weights fall back to the scores."""

from __future__ import annotations

import builders
import numpy as np
import pytest
from onnx import numpy_helper

from onnxprune.core.errors import ConfigError
from onnxprune.core.weights import PrunableWeight, find_prunable_weights, get_weight
from onnxprune.sparse.sparsify import LayerTarget, sparsify, sparsify_nm


def _weights(model) -> dict[str, np.ndarray]:
    return {pw.name: get_weight(model, pw) for pw in find_prunable_weights(model)}


class _Halve:
    """Zero the first ``target.zeros`` entries (flat order) and halve the others; decline ``skip``."""

    def __init__(self, skip: str = "") -> None:
        self.skip = skip
        self.seen: list[LayerTarget] = []

    def __call__(self, pw: PrunableWeight, w: np.ndarray, target: LayerTarget):
        self.seen.append(target)
        if pw.name == self.skip:
            return None
        mask = np.zeros(w.size, dtype=bool)
        if target.zeros is not None:
            mask[: target.zeros] = True
        else:
            n, m = target.nm
            mask.reshape(-1, m)[:, : m - n] = True  # the first m - n of each flat group (test only)
        return mask.reshape(w.shape), (w / 2).astype(w.dtype)


def test_update_values_are_written_and_counted_from_the_result() -> None:
    model = builders.mlp()
    before = _weights(model)
    update = _Halve(skip="fc2_w")
    result = sparsify(model, sparsity=0.3, update=update)
    after = _weights(result.model)
    w, got = before["fc1_w"].ravel(), after["fc1_w"].ravel()
    k = round(0.3 * w.size)
    assert update.seen[0].zeros == k  # the count magnitude sparsity would use
    assert np.all(got[:k] == 0) and np.allclose(got[k:], w[k:] / 2)
    # declined: pruned by |W| as usual, survivors keep their bits
    mag = sparsify(model, sparsity=0.3).model
    assert np.array_equal(after["fc2_w"], _weights(mag)["fc2_w"])
    report = {r.name: r for r in result.layers}
    assert report["fc1_w"].zeros_after == k


def test_update_that_leaves_zeros_unmasked_is_counted_honestly() -> None:
    model = builders.mlp()

    def update(pw, w, target):  # zeros only the first half of the asked count, and one more by its value
        mask = np.zeros(w.size, dtype=bool)
        mask[: target.zeros // 2] = True
        values = w.copy().ravel()
        values[-1] = 0.0
        return mask.reshape(w.shape), values.reshape(w.shape)

    result = sparsify(model, sparsity=0.5, update=update)
    for layer in result.layers:
        assert layer.zeros_after == round(0.5 * layer.numel) // 2 + 1


def test_update_gets_nm_and_the_pattern_it_returns_is_written() -> None:
    model = builders.mlp(d_in=16, hidden=32)
    update = _Halve()
    result = sparsify_nm(model, n=2, m=4, update=update)
    assert {t.nm for t in update.seen} == {(2, 4)}
    assert result.sparsity == pytest.approx(0.5)


def test_bad_update_output_and_global_scope_are_refused() -> None:
    model = builders.mlp()
    with pytest.raises(ConfigError, match="bool mask"):
        sparsify(model, sparsity=0.5, update=lambda pw, w, t: (np.zeros(3, bool), w))
    with pytest.raises(ConfigError, match="scope 'layer'"):
        sparsify(model, sparsity=0.5, scope="global", update=_Halve())


def test_only_prunes_and_reports_the_named_weights() -> None:
    model = builders.mlp()
    before = _weights(model)
    result = sparsify(model, sparsity=0.5, only=["fc2_w"])
    assert [r.name for r in result.layers] == ["fc2_w"]
    after = _weights(result.model)
    assert np.array_equal(after["fc1_w"], before["fc1_w"])
    assert np.count_nonzero(after["fc2_w"] == 0) == round(0.5 * after["fc2_w"].size)


def test_negative_zero_keeps_its_bits_under_an_update() -> None:
    model = builders.mlp()
    t = next(i for i in model.graph.initializer if i.name == "fc1_w")
    w = numpy_helper.to_array(t).copy()
    w.ravel()[0] = -0.0
    t.CopyFrom(numpy_helper.from_array(w, "fc1_w"))
    result = sparsify(model, sparsity=0.5, update=_Halve())
    got = _weights(result.model)["fc1_w"].ravel()
    assert got[0] == 0 and np.signbit(got[0])
