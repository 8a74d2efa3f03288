"""Every data file, key, shape and provider is checked before the first heavy step of a prune run.

Issue: on a fixed-batch model with `--calib ... --recover lstsq`, `--eval-data` without labels, `--data` of
the wrong shape, a missing `--labels` key and `--providers cuda` without CUDA each failed only after 15-22 s
of calibration; an all-NaN `--calib` gave a model of NaN weights; a `.npy` `--calib` was an internal
TypeError. Each must now fail with one line, exit 1, no file, and before analysis or sparsification starts
(a spy on those pure-python entry points proves it; the time is measured too).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune.cli.main import main

MODELS = Path(__file__).resolve().parent.parent / "models"
CALIB = MODELS / "digits_cnn_calib.npz"
TEST = MODELS / "digits_cnn_test.npz"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits CNN exported for a fixed batch of 8, and one bad data file per case."""
    folder = tmp_path_factory.mktemp("preflight")
    model = onnx.load(str(MODELS / "digits_cnn.onnx"))
    for vi in (*model.graph.input, *model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 8
    onnx.save(model, str(folder / "fixed8.onnx"))
    calib = np.load(CALIB)["input"]
    test = np.load(TEST)
    files = {"model": folder / "fixed8.onnx", "dynamic": MODELS / "digits_cnn.onnx"}

    def save(name: str, **arrays: np.ndarray) -> None:
        files[name] = folder / f"{name}.npz"
        np.savez(files[name], **arrays)

    save("no_labels", input=test["input"])
    save("wrong_shape", input=np.zeros((16, 1, 9, 9), np.float32))
    save("calib_250", input=calib[:250])
    save("nan_calib", input=np.full_like(calib, np.nan))
    one_inf = test["input"].copy()
    one_inf[3, 0, 2, 2] = np.inf
    save("inf_eval", input=one_inf, labels=test["labels"])
    save("label_12", input=test["input"], labels=np.where(np.arange(len(test["labels"])) == 5, 12, test["labels"]))
    files["npy"] = folder / "calib.npy"
    np.save(files["npy"], calib)
    files["out"] = folder / "out.onnx"
    return files


def _cases(d: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    lstsq = ["--calib", str(CALIB), "--recover", "lstsq"]
    return {
        "eval-data without labels": ([*lstsq, "--eval-data", str(d["no_labels"])], "has no label array 'labels'"),
        "--data of the wrong shape": ([*lstsq, "--data", str(d["wrong_shape"])],
                                      r"validation data \(--data\) .*size 9 on axis 2, the model wants 8"),
        "missing --labels key": ([*lstsq, "--eval-data", str(TEST), "--labels", "nolab"],
                                 r"has no label array 'nolab' \(it has \['input', 'labels'\]\)"),
        "calib not whole batches": (["--calib", str(d["calib_250"]), "--recover", "lstsq"],
                                    "has 250 samples, not a multiple of the model's fixed batch 8"),
        "all-NaN calib": (["--calib", str(d["nan_calib"]), "--recover", "lstsq"],
                          r"calibration data \(--calib\) .*holds 16384 NaN or infinite value"),
        "inf in eval data": ([*lstsq, "--eval-data", str(d["inf_eval"])], "holds 1 NaN or infinite value"),
        "label out of range": ([*lstsq, "--eval-data", str(d["label_12"])],
                               "label 12 at sample 5 is out of range .* 10 classes"),
        ".npy calib": (["--calib", str(d["npy"]), "--recover", "lstsq"],
                       r"is a \.npy file .*not an \.npz; write it with numpy\.savez\(path, input_name=array\)"),
        "cuda without CUDA": ([*lstsq, "--providers", "cuda"], "CUDAExecutionProvider is not available"),
    }


CASES = list(_cases({k: Path(k) for k in ("no_labels", "wrong_shape", "calib_250", "nan_calib", "inf_eval",
                                          "label_12", "npy")}))


@pytest.fixture()
def heavy_steps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records any start of analysis or sparsification (the first heavy steps of a prune run)."""
    import onnxprune.sparse.sparsify as sparsify_module
    import onnxprune.structured.analysis as analysis

    started: list[str] = []

    def spy(name: str, real: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            started.append(name)
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(analysis, "analyze", spy("analyze", analysis.analyze))
    monkeypatch.setattr(sparsify_module, "sparsify", spy("sparsify", sparsify_module.sparsify))
    return started


@pytest.mark.parametrize("case", CASES)
def test_bad_data_or_provider_fails_before_any_work(case: str, data: dict[str, Path], heavy_steps: list[str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    if case == "cuda without CUDA" and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    extra, message = _cases(data)[case]
    model = data["model"] if case != ".npy calib" else data["dynamic"]
    main(["prune", str(data["dynamic"]), "-o", str(data["out"]), "--ratio", "2", "-q"])  # warm imports
    capsys.readouterr()
    started = time.perf_counter()
    status = main(["prune", str(model), "-o", str(data["out"]), "-q", *extra])
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert status == 1, err
    assert err.count("\n") == 1 and err.startswith("onnxprune: error: "), err
    assert re.search(message, err), err
    assert heavy_steps == [], f"{heavy_steps} started before the bad input was refused"
    assert not data["out"].exists()
    assert seconds < 2.0, f"refused after {seconds:.2f} s"  # measured 0.04-0.4 s on a shared 2-core machine


def test_npy_is_explained_by_every_command(data: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["validate", str(data["dynamic"]), str(data["dynamic"]), "--data", str(data["npy"])],
                 ["eval", str(data["dynamic"]), "--eval-data", str(data["npy"])],
                 ["sensitivity", str(data["dynamic"]), "--calib", str(data["npy"])]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is a .npy file" in err and "numpy.savez(" in err, (argv, err)


def test_sensitivity_refuses_bad_eval_data_before_analysis(data: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import onnxprune.recovery.sensitivity as sensitivity

    started: list[str] = []
    monkeypatch.setattr(sensitivity, "analyze", lambda *a, **k: started.append("analyze"))
    assert main(["sensitivity", str(data["dynamic"]), "--calib", str(CALIB), "--eval-data",
                 str(data["no_labels"])]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no label array 'labels'" in err, err
    assert started == []
