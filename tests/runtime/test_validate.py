"""Validation: checker, strict shape inference and output comparison in onnxruntime (onnxprune.runtime.validate)."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from builders import conv_bn_relu, mlp, seq_tokens, two_heads
from onnx import numpy_helper

from onnxprune.cli.main import main
from onnxprune.core.errors import CalibrationError, ConfigError, ValidationError
from onnxprune.runtime.validate import Comparer, compare_outputs, validate_models


def perturbed(model: onnx.ModelProto, name: str, delta: float, index: tuple[int, ...] = (0,)) -> onnx.ModelProto:
    """A copy of ``model`` with one entry of initializer ``name`` moved by ``delta``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name == name:
            w = numpy_helper.to_array(t).copy()
            w[index] += delta
            t.CopyFrom(numpy_helper.from_array(w, name))
            return out
    raise KeyError(name)


# -- compare_outputs -------------------------------------------------------------------------------
def test_compare_identical_outputs_passes_with_zero_error():
    y = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    c = compare_outputs({"y": y}, {"y": y.copy()}, atol=0, rtol=0)
    o = c.output("y")
    assert c and c.passed and (o.max_abs, o.max_rel, o.mean_abs, o.needed_atol, o.needed_rtol) == (0, 0, 0, 0, 0)
    assert o.cosine == pytest.approx(1.0)


def test_metrics_and_the_tolerance_that_would_pass():
    ref = np.array([1.0, -2.0, 4.0, 0.5])
    cand = np.array([1.1, -2.0, 3.0, 0.5])
    c = compare_outputs({"y": ref}, {"y": cand}, atol=0.01, rtol=0.1)
    o = c.output("y")
    assert not c and not o.passed
    assert o.max_abs == pytest.approx(1.0)
    assert o.max_rel == pytest.approx(0.25)
    assert o.mean_abs == pytest.approx(1.1 / 4)
    # |d| <= atol + rtol |ref|: element 2 needs atol >= 1.0 - 0.1 * 4 = 0.6 (with rtol 0.1) ...
    assert o.needed_atol == pytest.approx(0.6)
    # ... or rtol >= (1.0 - 0.01) / 4 (with atol 0.01)
    assert o.needed_rtol == pytest.approx(0.99 / 4)
    assert compare_outputs({"y": ref}, {"y": cand}, atol=0.6 + 1e-9, rtol=0.1)
    assert compare_outputs({"y": ref}, {"y": cand}, atol=0.01, rtol=0.99 / 4 + 1e-9)
    assert not compare_outputs({"y": ref}, {"y": cand}, atol=0.6 - 1e-6, rtol=0.1)
    assert "would pass with --atol 0.6" in c.summary()


def test_rtol_cannot_rescue_a_difference_where_the_reference_is_zero():
    c = compare_outputs({"y": np.array([0.0, 1.0])}, {"y": np.array([0.5, 1.0])}, atol=0.1, rtol=0.1)
    assert math.isinf(c.output("y").needed_rtol) and math.isinf(c.output("y").max_rel)
    assert c.to_dict()["outputs"][0]["needed_rtol"] == "inf"
    json.dumps(c.to_dict())


def test_nan_handling_and_structural_mismatches():
    ref = {"a": np.array([np.nan, 1.0]), "b": np.zeros((2, 3)), "c": np.zeros(2), "d": np.zeros(2, np.float32)}
    cand = {"a": np.array([np.nan, 1.0]), "b": np.zeros((3, 2)), "d": np.zeros(2, np.float64)}
    c = compare_outputs(ref, cand)
    assert c.output("a").passed  # NaN where the original has NaN is a match
    assert "shape (3, 2) differs" in c.output("b").problem
    assert c.output("c").problem == "missing in the candidate"
    assert "dtype float64 differs" in c.output("d").problem
    bad = compare_outputs({"y": np.array([1.0, 2.0])}, {"y": np.array([np.nan, 2.0])})
    assert not bad and "NaN/Inf differs from the original at 1 element" in bad.output("y").problem


def test_top1_and_top5_agreement_on_class_scores():
    ref = np.zeros((4, 8), np.float32)
    ref[np.arange(4), [0, 1, 2, 3]] = 10.0
    cand = ref.copy()
    cand[0, 7] = 20.0  # row 0: top-1 changes, but class 0 stays in the top 5
    cand[1, 1] = -5.0  # row 1: class 1 falls out of the top 5 (five other classes tie above it at 0)
    o = compare_outputs({"s": ref}, {"s": cand}).output("s")
    assert o.top1 == pytest.approx(0.5)
    assert o.top5 == pytest.approx(0.75)
    assert compare_outputs({"v": np.zeros((4, 1))}, {"v": np.zeros((4, 1))}).output("v").top1 is None


def test_report_only_never_fails_but_keeps_the_metrics():
    c = compare_outputs({"y": np.ones(3)}, {"y": np.zeros(3)}, report_only=True)
    assert c and c.passed and not c.within_tolerance
    assert c.output("y").max_abs == 1.0
    assert c.summary().startswith("OUTSIDE TOLERANCE (report only)")


def test_comparer_over_batches_equals_one_comparison_of_everything():
    r = np.random.default_rng(1)
    ref = r.standard_normal((6, 5))
    cand = ref + r.normal(0, 1e-3, ref.shape)
    acc = Comparer(atol=1e-4, rtol=1e-3)
    for i in range(0, 6, 4):
        acc.add({"y": ref[i : i + 4]}, {"y": cand[i : i + 4]})
    whole = compare_outputs({"y": ref}, {"y": cand}, atol=1e-4, rtol=1e-3).output("y")
    split = acc.result().output("y")
    for field in ("max_abs", "max_rel", "mean_abs", "cosine", "needed_atol", "needed_rtol", "top1", "top5", "passed"):
        assert getattr(split, field) == pytest.approx(getattr(whole, field)), field


def test_negative_tolerance_is_a_config_error():
    with pytest.raises(ConfigError, match="atol must be a finite number >= 0"):
        compare_outputs({}, {}, atol=-1)


# -- validate_models -------------------------------------------------------------------------------
def test_validate_same_model_passes_on_generated_inputs():
    report = validate_models(conv_bn_relu(), conv_bn_relu())
    assert report and report.passed
    assert [c.name for c in report.checks] == ["checker", "shape_inference", "interface"]
    assert report.samples == 4 and report.inputs == "random seed=0"
    assert report.comparison("cpu").output("out").max_abs == 0.0
    json.dumps(report.to_dict())


def test_validate_perturbed_weight_fails_and_the_suggested_tolerance_passes():
    original = conv_bn_relu()
    candidate = perturbed(original, "w2", 0.05, (0, 0, 1, 1))
    report = validate_models(original, candidate, atol=1e-5, rtol=1e-5)
    assert not report
    cmp = report.comparison("cpu")
    assert cmp.output("out").max_abs > 1e-3
    with pytest.raises(ValidationError, match="validation FAILED.*'out' max\\|diff\\|="):
        report.raise_if_failed()
    # The tolerance the report names really passes, and a slightly smaller one really fails.
    assert validate_models(original, candidate, atol=cmp.needed_atol * 1.0001, rtol=1e-5)
    assert not validate_models(original, candidate, atol=cmp.needed_atol * 0.99, rtol=1e-5)
    assert validate_models(original, candidate, atol=1e-5, rtol=cmp.needed_rtol * 1.0001)


def test_validate_report_only_passes_a_changed_model():
    original = conv_bn_relu()
    report = validate_models(original, perturbed(original, "w1", 1.0), report_only=True)
    assert report.passed and not report.comparison("cpu").within_tolerance
    report.raise_if_failed()


def test_validate_multiple_outputs_names_only_the_changed_one():
    original = two_heads()
    candidate = perturbed(original, "emb_w", 0.5, (3, 2))
    cmp = validate_models(original, candidate, batch_size=4, samples=8).comparison("cpu")
    assert cmp.output("logits").passed and cmp.output("logits").top1 == 1.0 and cmp.output("logits").top5 == 1.0
    # [N, 4] also looks like class scores (2-D float, C >= 2): top-1 is reported, top-5 needs C > 5
    assert not cmp.output("embed").passed and cmp.output("embed").top5 is None
    assert [o.name for o in cmp.failed] == ["embed"]


def test_validate_class_scores_report_top1_drop():
    original = two_heads(classes=10)
    candidate = perturbed(original, "cls_b", 50.0, (3,))  # class 3 now wins almost always
    cmp = validate_models(original, candidate, batch_size=16, samples=32, report_only=True).comparison("cpu")
    assert cmp.output("logits").top1 < 0.5


def test_validate_with_npz_inputs(tmp_path):
    x = np.random.default_rng(5).standard_normal((7, 16)).astype(np.float32)
    data = tmp_path / "in.npz"
    np.savez(data, x=x)
    report = validate_models(mlp(), mlp(), data=data, batch_size=3)
    assert report and report.samples == 7 and report.batch_size == 3 and report.inputs == f"data {data}"
    limited = validate_models(mlp(), mlp(), data=data, samples=2)
    assert limited.samples == 2
    # the generated-input path uses different values: the data really was used
    orig = validate_models(mlp(), perturbed(mlp(), "fc2_b", 1.0), data=data, report_only=True)
    assert orig.comparison("cpu").output("out").elements == 7 * 10


def test_validate_npz_that_does_not_fit(tmp_path):
    data = tmp_path / "in.npz"
    np.savez(data, y=np.zeros((2, 16), np.float32))
    with pytest.raises(CalibrationError, match="lacks model input"):
        validate_models(mlp(), mlp(), data=data)


def test_validate_dynamic_dims_take_given_values_else_chosen_ones():
    report = validate_models(seq_tokens(), seq_tokens(), dims={"seq": 5}, batch_size=2)
    assert report and report.comparison("cpu").output("out").shape == (2, 5, 6)
    chosen = validate_models(seq_tokens(), seq_tokens())  # a sequence-like axis without --dim: 32, said
    assert chosen and chosen.comparison("cpu").output("out").shape == (1, 32, 6)
    assert chosen.inputs == "random seed=0 seq=32"


def test_validate_reports_a_broken_candidate_without_running_it():
    broken = onnx.ModelProto()
    broken.CopyFrom(mlp())
    broken.graph.node[1].input[0] = "no_such_tensor"
    report = validate_models(mlp(), broken)
    assert not report and report.comparisons == ()
    assert not report.checks[0].passed
    assert report.summary().startswith("validation FAILED: checker of")


def test_validate_reports_an_interface_mismatch():
    report = validate_models(mlp(), conv_bn_relu())
    assert not report
    assert "does not fit the original's" in next(c for c in report.checks if c.name == "interface").message


def test_validate_option_errors():
    with pytest.raises(ConfigError, match="batch size must be at least 1"):
        validate_models(mlp(), mlp(), batch_size=0)
    with pytest.raises(ConfigError, match="unknown provider"):
        validate_models(mlp(), mlp(), providers=("gpu",))


# -- CLI -------------------------------------------------------------------------------------------
@pytest.fixture()
def files(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(conv_bn_relu(), a)
    onnx.save(perturbed(conv_bn_relu(), "w2", 0.05, (0, 0, 1, 1)), b)
    return a, b


def test_cli_validate_pass_and_fail(files, capsys):
    a, b = files
    assert main(["validate", str(a), str(a)]) == 0
    out = capsys.readouterr().out
    assert "validation PASSED" in out and "max|diff|" in out
    assert main(["validate", str(a), str(b)]) == 0  # drift is reported, not judged, until a bound is set
    assert "bounds: none set" in capsys.readouterr().out
    assert main(["validate", str(a), str(b), "--atol", "1e-4", "--rtol", "1e-3"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxprune: validation failed") and "would pass with --atol" in err[0]
    assert main(["validate", str(a), str(b), "--atol", "10"]) == 0


def test_cli_validate_json(files, capsys):
    a, _ = files
    assert main(["validate", str(a), str(a), "--json", "--samples", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is True and data["samples"] == 2
    assert data["comparisons"]["cpu"]["outputs"][0]["name"] == "out"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--dim", "seq"], "NAME=VALUE"),
        (["--providers", "gpu"], "unknown provider"),
        (["--data", "missing.npz"], "no such file"),
        (["--atol", "-1"], "atol must be"),
    ],
)
def test_cli_validate_user_errors_are_one_line(files, capsys, extra, match):
    a, _ = files
    assert main(["validate", str(a), str(a), *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxprune: error:") and match in err[0]


def test_cli_validate_missing_model(files, capsys, tmp_path):
    a, _ = files
    assert main(["validate", str(a), str(tmp_path / "nope.onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"onnxprune: error: {tmp_path / 'nope.onnx'}: no such file; check the path"]


def test_a_candidate_file_with_external_data_is_checked_and_run_from_its_file(tmp_path):
    """A candidate given as a path is checked from its structure (external files checked for presence and
    size) and run from the file, its weights never loaded: the report is the in-memory candidate's, and a
    truncated data file is still refused. A bias kept in a Constant node of 1 KB goes to external data too,
    and shape inference reads it: it is read in with the structure."""
    from builders import wide_mlp

    from onnxprune.core.errors import ModelLoadError
    from onnxprune.core.io import save_model

    model = wide_mlp(d=256, layers=3)
    (bias,) = [t for t in model.graph.initializer if t.name == "fc0_b"]
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["fc0_b"], name="fc0_b", value=bias))
    model.graph.initializer.remove(bias)
    path = save_model(perturbed(model, "fc0_w", 1e-3), tmp_path / "cand.onnx", external_data=True)
    stored = onnx.load(path, load_external_data=False).graph
    assert stored.node[0].attribute[0].t.data_location == onnx.TensorProto.EXTERNAL
    assert any(t.data_location == onnx.TensorProto.EXTERNAL
               for t in onnx.load(path, load_external_data=False).graph.initializer)
    from_file = validate_models(model, path, report_only=True)
    from_memory = validate_models(model, onnx.load(path), report_only=True)
    assert [c.to_dict() for c in from_file.checks] == [c.to_dict() for c in from_memory.checks]
    assert all(c.passed for c in from_file.checks)
    assert from_file.comparisons[0][1].to_dict() == from_memory.comparisons[0][1].to_dict()
    data = tmp_path / "cand.onnx.data"
    data.write_bytes(data.read_bytes()[:-4])
    with pytest.raises(ModelLoadError, match="cand.onnx.data"):
        validate_models(model, path)
