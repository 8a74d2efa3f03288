"""Every committed model in ``models/`` through every pruning mode: valid, equivalent, and still scoreable.

Parametrized over the ``.onnx`` files found in ``models/``, so a model added by
``tools/export_models.py`` is tested without touching this file. For each model and mode:

* the pruned model passes ``onnx.checker`` (full check), loads in onnxruntime and keeps the original
  input/output names, dtypes and shapes;
* structured cuts equal the zero-equivalence oracle (:func:`onnxprune.structured.oracle.zeroed_reference`) within
  1e-4 of the output scale, on the model's real calibration data when it has some, else seeded inputs;
* sparse modes keep every shape and zero exactly what they report;
* the trained digits models are scored on their real held-out split before and after pruning.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from oracle_check import assert_close, run_ort, seeded_feeds

from onnxprune.core.io import load_model
from onnxprune.core.stats import count_params
from onnxprune.runtime.evaluate import evaluate_accuracy
from onnxprune.sparse.sparsify import sparsify, sparsify_nm
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.prune import prune_structured

#: (pruned model, zeroed reference for structured cuts, achieved ratio, entries removed: the predicted parameter
#: drop of a structured cut, the entries newly zeroed by sparsity)
Pruned = tuple[onnx.ModelProto, "onnx.ModelProto | None", float, int]

MODELS = Path(__file__).resolve().parents[1] / "models"
FILES = sorted(MODELS.glob("*.onnx"))
MANIFEST = json.loads((MODELS / "manifest.json").read_text())["models"]
TRAINED = sorted(name for name, m in MANIFEST.items() if m["accuracy"])


def _structured(ratio: float) -> Callable[[onnx.ModelProto], Pruned]:
    def run(model: onnx.ModelProto) -> Pruned:
        result = prune_structured(model, ratio=ratio)
        removed = result.dg.params_removed(result.plan.keep)
        return result.model, zeroed_reference(model, result.dg, result.plan), ratio, removed

    return run


def _sparse(sparsity: float) -> Callable[[onnx.ModelProto], Pruned]:
    def run(model: onnx.ModelProto) -> Pruned:
        result = sparsify(model, sparsity=sparsity)
        return result.model, None, result.sparsity, result.zeros_after - result.zeros_before

    return run


def _nm(model: onnx.ModelProto) -> Pruned:
    result = sparsify_nm(model, n=2, m=4)
    return result.model, None, result.sparsity, result.zeros_after - result.zeros_before


MODES = {
    "structured-0.3": _structured(0.3),
    "structured-0.5": _structured(0.5),
    "unstructured-0.5": _sparse(0.5),
    "unstructured-0.9": _sparse(0.9),
    "nm-2:4": _nm,
}


def _signature(model: onnx.ModelProto) -> list[tuple[str, str]]:
    inits = {t.name for t in model.graph.initializer}
    return [(vi.name, str(vi.type)) for vi in [*model.graph.input, *model.graph.output] if vi.name not in inits]


def _feeds(path: Path, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Real calibration inputs (first 64 samples) when the model has them, else seeded normal inputs."""
    calib = (MANIFEST.get(path.stem, {}).get("data") or {}).get("calib")
    if calib:
        data = np.load(MODELS / calib["file"])
        inits = {t.name for t in model.graph.initializer}
        return {vi.name: data[vi.name][:64] for vi in model.graph.input if vi.name not in inits}
    return seeded_feeds(model, seed=0, dims={"batch": 3})


def test_models_folder_is_small_and_listed() -> None:
    assert len(FILES) >= 15
    assert sorted(MANIFEST) == sorted(p.stem for p in FILES), "rerun tools/export_models.py"
    total = sum(p.stat().st_size for p in MODELS.iterdir())
    assert total < 30 * 2**20
    assert all(p.stat().st_size < 2.5 * 2**20 for p in FILES)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_pruned_model_is_valid_and_equivalent(path: Path, mode: str) -> None:
    model = load_model(path)
    pruned, reference, achieved, zeroed = MODES[mode](model)
    onnx.checker.check_model(pruned, full_check=True)
    assert _signature(pruned) == _signature(model)
    feeds = _feeds(path, model)
    want = run_ort(model, feeds)
    got = run_ort(pruned, feeds)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert all(np.all(np.isfinite(g)) for g in got if g.dtype.kind == "f")
    if reference is not None:
        assert_close(got, run_ort(reference, feeds), tol=1e-4, what=f"{path.stem} {mode}")
        assert count_params(pruned) < count_params(model), "no channel was removed"
        assert count_params(model) - count_params(pruned) == zeroed, "parameter drop differs from the prediction"
    else:
        assert count_params(pruned) == count_params(model)  # shapes unchanged: only zeros written
        target = 0.5 if mode == "nm-2:4" else float(mode.split("-")[1])
        assert achieved == pytest.approx(target, abs=0.01)
        assert zeroed > 0
        assert count_params(model, nonzero=True) - count_params(pruned, nonzero=True) == zeroed


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", TRAINED)
def test_trained_model_accuracy_before_and_after(name: str, mode: str) -> None:
    info = MANIFEST[name]
    test_data = MODELS / info["data"]["test"]["file"]
    model = load_model(MODELS / info["file"])
    before = evaluate_accuracy(model, test_data)
    assert before.top1 == pytest.approx(info["accuracy"]["top1"], abs=1e-12)
    pruned, *_ = MODES[mode](model)
    after = evaluate_accuracy(pruned, test_data)
    assert after.n == before.n == 360 and after.output == before.output
    assert 0.0 <= after.top1 <= after.top5 <= 1.0  # type: ignore[operator]
    if mode == "unstructured-0.5":
        # Half of the smallest weights of a trained classifier carry little: far above chance (10%).
        assert after.top1 > 0.5
