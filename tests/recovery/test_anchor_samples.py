"""Gram-path anchors on the first calibration samples: what they measure, and what stays exact."""

from __future__ import annotations

import pytest

from onnxprune.core.errors import ConfigError
from onnxprune.recovery.sensitivity import sensitivity, start_sensitivity

CNN = "models/digits_cnn.onnx"
CNN_CALIB = "models/digits_cnn_calib.npz"  # 256 samples, 8 batches of 32


def test_anchor_is_the_whole_model_error_on_the_first_samples():
    """The anchor of each group is the whole-model error over exactly the first 64 samples (not 32, not 256),
    it is reported as an estimate, and the rest of the curve is the Gram shape of those same 64 samples
    scaled by it: the whole estimate is the analysis of the first 64 samples."""
    rough = sensitivity(CNN, CNN_CALIB, anchor_samples=64)
    full = sensitivity(CNN, CNN_CALIB, anchor_samples=None)
    on64 = sensitivity(CNN, CNN_CALIB, method="model", max_samples=64)
    on32 = sensitivity(CNN, CNN_CALIB, method="model", max_samples=32)
    gram64 = sensitivity(CNN, CNN_CALIB, max_samples=64)  # Grams and anchors on the first 64 samples
    assert rough.samples == full.samples == 256  # the pass still reads every sample (bias recovery's means)
    for r, f, s64, s32, g64 in zip(rough.groups, full.groups, on64.groups, on32.groups, gram64.groups, strict=True):
        mid = len(r.ratios) // 2
        assert r.errors[mid] == pytest.approx(s64.errors[mid], rel=1e-9)
        assert r.errors[mid] != pytest.approx(s32.errors[mid], rel=1e-6)
        assert r.errors[mid] != pytest.approx(f.errors[mid], rel=1e-6)  # the full anchor differs
        assert f.exact[mid] and not any(r.exact[i] for i in range(len(r.ratios)) if r.kept[i] < r.size)
        assert r.errors == pytest.approx(g64.errors, rel=1e-9)  # Gram curve of the same 64 samples
        cut = [i for i in range(len(r.ratios)) if r.kept[i] < r.size and i != mid]
        assert any(r.errors[i] * f.errors[mid] != pytest.approx(f.errors[i] * r.errors[mid], rel=1e-6)
                   for i in cut)  # not the 256-sample Gram curve rescaled


def test_anchor_samples_covering_every_batch_measure_exactly():
    """Asking for as many samples as there are (or more) is the full measurement, exact."""
    full = sensitivity(CNN, CNN_CALIB, anchor_samples=None, ratios=(0.3, 0.5))
    assert sensitivity(CNN, CNN_CALIB, anchor_samples=256, ratios=(0.3, 0.5)) == full
    assert sensitivity(CNN, CNN_CALIB, anchor_samples=10_000, ratios=(0.3, 0.5)) == full


def test_refine_replaces_a_rough_anchor_with_the_full_measurement():
    """A budget reads measured points only: refine() measures an anchor again on every sample."""
    run = start_sensitivity(CNN, CNN_CALIB, anchor_samples=32, ratios=(0.3, 0.5, 0.7))
    full = sensitivity(CNN, CNN_CALIB, anchor_samples=None, ratios=(0.3, 0.5, 0.7))
    g = run.chosen[0]
    assert (g.id, 0.5) not in run.exact
    assert run.refine([(g.id, 0.5)]) == 1
    assert (g.id, 0.5) in run.exact
    assert run.errors[(g.id, 0.5)] == pytest.approx(full.group(g.id).errors[1], rel=1e-9)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_anchor_samples_are_refused(bad):
    with pytest.raises(ConfigError, match="anchor_samples must be a positive integer or None"):
        sensitivity(CNN, CNN_CALIB, anchor_samples=bad)


def test_rough_anchors_on_worker_processes_equal_local():
    """The anchors' smaller calibration set travels to the workers: same report as in this process (to
    round-off: this process runs each anchor from cached activations, the workers on the whole model)."""
    args = {"ratios": (0.3, 0.5), "anchor_samples": 64}
    local = sensitivity(CNN, CNN_CALIB, **args)
    assert not any(g.exact[1] for g in local.groups)  # anchored on 64 of 256 samples
    spread = sensitivity(CNN, CNN_CALIB, executor="processes", workers=2, **args)
    for a, b in zip(spread.groups, local.groups, strict=True):
        assert (a.group, a.kept, a.exact, a.macs) == (b.group, b.kept, b.exact, b.macs)
        assert a.errors == pytest.approx(b.errors, rel=1e-6)  # float32 round-off (about 1e-9 here)
