"""NaN and infinity: refused in data, never summarised as a perfect match (recovery: tests/recovery).

Issue: an all-NaN `--calib` with `--recover lstsq` exited 0 with every weight NaN, and the summary said
"cosine 1.0000, max|diff| 0, top-1 agreement 100.0%" (NaN outputs compared equal to themselves).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from builders import make_model, mlp, vinfo
from onnx import helper

from onnxprune.core.errors import CalibrationError
from onnxprune.runtime.evaluate import evaluate_accuracy
from onnxprune.runtime.feeds import check_feeds, input_specs
from onnxprune.runtime.validate import compare_outputs


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_feeds_with_nan_or_inf_are_refused(bad: float) -> None:
    x = np.ones((4, 16), np.float32)
    x[2, 3] = bad
    with pytest.raises(CalibrationError, match=r"calib\.npz, 'x' holds 1 NaN or infinite value\(s\) of 64; .*"
                                               r"nan_to_num"):
        check_feeds({"x": x}, input_specs(mlp()), where="calib.npz")


def test_all_nan_outputs_are_not_a_perfect_match() -> None:
    nan = np.full((8, 10), np.nan, np.float32)
    out = compare_outputs({"y": nan}, {"y": nan.copy()}, report_only=True).output("y")
    assert math.isnan(out.cosine) and math.isnan(out.max_abs) and math.isnan(out.mean_abs)
    assert out.top1 is not None and math.isnan(out.top1) and math.isnan(out.top5)  # not 100 % agreement
    assert out.nonfinite == 80
    assert out.to_dict()["cosine"] == "nan" and out.to_dict()["top1"] == "nan"


def test_partly_nan_outputs_give_nan_metrics_and_finite_ones_are_unchanged() -> None:
    ref = np.arange(20, dtype=np.float32).reshape(2, 10)
    cand = ref + 0.5
    clean = compare_outputs({"y": ref}, {"y": cand}).output("y")
    assert clean.max_abs == pytest.approx(0.5) and clean.top1 == 1.0 and clean.nonfinite == 0
    ref[1, 4] = cand[1, 4] = np.nan
    dirty = compare_outputs({"y": ref}, {"y": cand}).output("y")
    assert math.isnan(dirty.cosine) and math.isnan(dirty.max_abs) and math.isnan(dirty.top1)
    assert dirty.nonfinite == 1


def test_drift_summary_ranks_a_nan_output_worst() -> None:
    from onnxprune.report.drift import drift_lines

    good = np.ones((2, 3), np.float32)
    nan = np.full((2, 3), np.nan, np.float32)
    comparison = compare_outputs({"a": good, "b": nan}, {"a": good + 1, "b": nan}, report_only=True)
    (line,) = drift_lines({"comparisons": {"cpu": comparison.to_dict()}})
    assert "'b' cosine nan" in line and "max|diff| nan" in line and "1.0000" not in line


def test_rows_of_nan_scores_never_count_as_correct() -> None:
    """Log of a negative score is NaN; argsort would put such a row's 'prediction' at class 0."""
    model = make_model([helper.make_node("Log", ["scores"], ["logits"], name="log")],
                       [vinfo("scores", ["N", 4])], [vinfo("logits", ["N", 4])])
    scores = np.array([[1, 2, 3, 9], [-1, 2, 3, 4], [-1, -1, -1, -1], [9, 1, 1, 1]], np.float32)
    labels = np.array([3, 3, 0, 0])  # rows 1 and 2 are NaN rows; row 2's label is 0
    result = evaluate_accuracy(model, {"scores": scores, "labels": labels})
    assert result.top1 == pytest.approx(2 / 4)  # rows 0 and 3 only
