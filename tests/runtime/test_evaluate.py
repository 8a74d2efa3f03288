"""Accuracy measurement: exact on hand-made scores, equal to the MANIFEST on the committed digits models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from builders import class_scores

from onnxprune.cli.main import main
from onnxprune.core.errors import CalibrationError, ConfigError
from onnxprune.runtime.evaluate import EvalResult, evaluate_accuracy

MODELS = Path(__file__).resolve().parents[2] / "models"
MANIFEST = json.loads((MODELS / "manifest.json").read_text())["models"]
TRAINED = sorted(name for name, m in MANIFEST.items() if m["accuracy"])


def _scores_and_labels() -> tuple[np.ndarray, np.ndarray]:
    """8 samples, 6 classes: label ranks 1st for 5 samples, 2nd..5th for 2, last (6th) for 1."""
    rank_of_label = np.array([0, 0, 0, 0, 0, 1, 4, 5])
    rng = np.random.default_rng(0)
    scores = np.zeros((8, 6), np.float32)
    labels = np.zeros(8, np.int64)
    for i, rank in enumerate(rank_of_label):
        order = rng.permutation(6)  # order[k] is the class with the k-th highest score
        scores[i, order] = np.arange(6, 0, -1, dtype=np.float32)
        labels[i] = order[rank]
    return scores, labels


def test_known_scores_give_exact_top1_top5(tmp_path: Path) -> None:
    scores, labels = _scores_and_labels()
    np.savez(tmp_path / "d.npz", scores=scores, labels=labels)
    result = evaluate_accuracy(class_scores(), tmp_path / "d.npz")
    assert result == EvalResult(top1=5 / 8, top5=7 / 8, n=8, num_classes=6, output="logits")


@pytest.mark.parametrize("batch", [1, 3, 8, 256])
def test_batch_size_does_not_change_the_result(batch: int) -> None:
    scores, labels = _scores_and_labels()
    result = evaluate_accuracy(class_scores(), {"scores": scores, "labels": labels}, batch_size=batch)
    assert (result.top1, result.top5, result.n) == (5 / 8, 7 / 8, 8)


def test_fixed_batch_model_is_fed_one_sample_at_a_time() -> None:
    scores, labels = _scores_and_labels()
    result = evaluate_accuracy(class_scores(batch=1), {"scores": scores, "labels": labels}, batch_size=4)
    assert (result.top1, result.n) == (5 / 8, 8)


def test_ties_go_to_the_lower_class_like_argmax() -> None:
    scores = np.ones((2, 6), np.float32)
    result = evaluate_accuracy(class_scores(), {"scores": scores, "labels": np.array([0, 1])})
    assert result.top1 == 0.5


def test_top5_is_none_below_five_classes() -> None:
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], np.float32)
    result = evaluate_accuracy(class_scores(classes=3), {"scores": scores, "labels": np.array([1, 2])})
    assert result.top5 is None and result.top1 == 0.5 and result.num_classes == 3


def test_integral_float_labels_are_accepted() -> None:
    scores, labels = _scores_and_labels()
    result = evaluate_accuracy(class_scores(), {"scores": scores, "labels": labels.astype(np.float32)})
    assert result.top1 == 5 / 8


@pytest.mark.parametrize("name", TRAINED)
def test_committed_model_accuracy_matches_manifest(name: str) -> None:
    info = MANIFEST[name]
    test_file = MODELS / info["data"]["test"]["file"]
    result = evaluate_accuracy(MODELS / info["file"], test_file)
    assert result.top1 == pytest.approx(info["accuracy"]["top1"], abs=1e-12)
    assert result.top5 == pytest.approx(info["accuracy"]["top5"], abs=1e-12)
    assert result.n == info["accuracy"]["n"] == 360
    assert result.top1 >= 0.97  # the bar set for the trained digits models (MANIFEST.md)
    # Independent oracle: a plain onnxruntime session and numpy argmax on the same split.
    data = np.load(test_file)
    sess = ort.InferenceSession(str(MODELS / info["file"]), providers=["CPUExecutionProvider"])
    feeds = {i.name: data[i.name] for i in sess.get_inputs()}
    scores = sess.run([result.output], feeds)[0]
    assert np.mean(scores.argmax(axis=1) == data["labels"]) == pytest.approx(result.top1, abs=1e-12)
    assert f"top-1 {result.top1:.2%}" in (MODELS / "MANIFEST.md").read_text()


@pytest.mark.parametrize("name", TRAINED)
def test_calibration_split_is_disjoint_from_test(name: str) -> None:
    info = MANIFEST[name]
    test = np.load(MODELS / info["data"]["test"]["file"])
    calib = np.load(MODELS / info["data"]["calib"]["file"])
    key = next(k for k in test.files if k != "labels")
    t = test[key].reshape(len(test["labels"]), -1)
    c = calib[key].reshape(len(calib["labels"]), -1)
    assert len(c) == 256 and len(t) == 360
    assert not any((c == row).all(axis=1).any() for row in t)


def _data() -> dict[str, np.ndarray]:
    scores, labels = _scores_and_labels()
    return {"scores": scores, "labels": labels}


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda d: d.pop("scores"), CalibrationError, r"lacks model input\(s\) \['scores'\]"),
        (lambda d: d.pop("labels"), CalibrationError, r"no label array 'labels'"),
        (lambda d: d.update(scores=d["scores"][:, :4]), CalibrationError, r"has shape \(8, 4\)"),
        (lambda d: d.update(scores=d["scores"].astype(np.float64)), CalibrationError, r"dtype float64"),
        (lambda d: d.update(labels=d["labels"][:5]), CalibrationError, r"different sample counts"),
        (lambda d: d.update(labels=d["labels"] + 3), CalibrationError,
         r"label \d at sample \d is out of range .* 6 classes"),
        (lambda d: d.update(labels=d["labels"] - 9), CalibrationError, r"negative class index"),
        (lambda d: d.update(labels=d["labels"].reshape(2, 4)), CalibrationError, r"1-D array"),
        (lambda d: d.update(labels=d["labels"] + 0.5), CalibrationError, r"integer class indices"),
    ],
)
def test_bad_data_is_refused_in_one_line(change, error, match) -> None:
    data = _data()
    change(data)
    with pytest.raises(error, match=match) as info:
        evaluate_accuracy(class_scores(), data)
    assert "\n" not in str(info.value)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"output 'probs' is not an output.*\['logits'\]"):
        evaluate_accuracy(class_scores(), _data(), output="probs")
    with pytest.raises(ConfigError, match=r"batch_size must be a positive integer, got 0 \(--batch-size\)"):
        evaluate_accuracy(class_scores(), _data(), batch_size=0)  # the flag's name, not its old spelling


def test_unreadable_data_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match=r"bad.npz.*not a readable .npz"):
        evaluate_accuracy(class_scores(), bad)
    with pytest.raises(CalibrationError, match=r"no such file"):
        evaluate_accuracy(class_scores(), tmp_path / "missing.npz")


def test_cli_prints_accuracy_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    model, data = MODELS / "digits_cnn.onnx", MODELS / "digits_cnn_test.npz"
    expected = MANIFEST["digits_cnn"]["accuracy"]["top1"]
    assert main(["eval", str(model), "--eval-data", str(data), "--batch-size", "50"]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {expected:.2%}" in out and "360 samples" in out
    assert main(["eval", str(model), "--eval-data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["top1"] == pytest.approx(expected) and report["n"] == 360 and report["output"] == "logits"


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", str(MODELS / "digits_mlp.onnx"), "--eval-data", str(MODELS / "digits_cnn_test.npz")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("onnxprune: error: ") and err.count("\n") == 1 and "the model wants" in err
    code = main(["eval", str(MODELS / "digits_cnn.onnx"), "--eval-data", str(MODELS / "digits_cnn_test.npz"),
                 "--labels", "y"])
    assert code == 1 and "no label array 'y'" in capsys.readouterr().err
