"""Memory on big models: each step runs in a fresh process and its peak RSS is read from the kernel (VmHWM).

The bound is on *growth*: peak RSS minus the peak of the same command on a tiny model (the interpreter,
onnx and onnxruntime alone take ~100 MB), divided by the model's size on disk. tools/bench_large.py
measures the same steps on a model over 2 GB.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from bench_large import STEPS, measure, write_wide_mlp  # noqa: E402
from builders import wide_mlp  # noqa: E402

from onnxprune.core.errors import ModelLoadError, OutputError  # noqa: E402
from onnxprune.core.io import file_size, load_model, save_model  # noqa: E402

BOUND = 2.5
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    folder = tmp_path_factory.mktemp("large")
    big, tiny = folder / "big.onnx", folder / "tiny.onnx"
    # 100 MB in 24 tensors of 4 MB: per-tensor scratch space (a sort of one tensor) stays small next to the
    # model, as it does on the 2.4 GB model of tools/bench_large.py (268 MB tensors).
    size = write_wide_mlp(big, d=1024, layers=24)
    write_wide_mlp(tiny, d=64, layers=2)
    return big, tiny, size


def growth(step: str, models: tuple[Path, Path, int], tmp_path: Path) -> float:
    big, tiny, size = models
    peaks = []
    for name, model in (("tiny", tiny), ("big", big)):
        out = tmp_path / name
        out.mkdir()
        argv = [a.format(model=model, out=out / "out.onnx") for a in STEPS[step]]
        code, peak, _, err = measure(argv, timeout=600)
        assert code == 0, err
        peaks.append(peak)
    return (peaks[1] - peaks[0]) / size


@slow
@pytest.mark.parametrize(("step", "bound"), [
    ("load", 1.3),  # weights read once, the checker runs on a weightless view
    ("load+save", 1.3),  # saving streams one tensor at a time and never edits the model
    ("unstructured-novalidate", BOUND),
    ("nm-novalidate", BOUND),
    # The source is only read; the pruned model is built without the weights it slices (surgery.apply_plan).
    ("structured-novalidate", BOUND),
    # Validated runs (the default) drop their copy of the original once pruned and run the source file
    # itself (onnxruntime maps its weights, one session at a time); a structured run's zeroed reference is
    # streamed to a scratch file (oracle.write_zeroed_reference). The pruning step stays the peak.
    ("unstructured", BOUND),
    ("nm", BOUND),
    ("structured", BOUND),
])
def test_peak_memory_within_bound(models: tuple[Path, Path, int], tmp_path: Path, step: str, bound: float) -> None:
    ratio = growth(step, models, tmp_path)
    assert ratio < bound, f"{step}: peak grew by {ratio:.2f}x the model's size (bound {bound}x)"


@slow
def test_large_outputs_keep_external_data(models: tuple[Path, Path, int], tmp_path: Path) -> None:
    big, _, size = models
    for step in ("unstructured-novalidate", "structured-novalidate"):
        out = tmp_path / step
        out.mkdir()
        argv = [a.format(model=big, out=out / "out.onnx") for a in STEPS[step]]
        code, _, _, err = measure(argv, timeout=600)
        assert code == 0, err
        assert (out / "out.onnx").stat().st_size < 1 << 16 and (out / "out.onnx.data").is_file()
        assert sorted(p.name for p in out.iterdir()) == ["out.onnx", "out.onnx.data"]
        pruned = load_model(out / "out.onnx")
        assert len(pruned.graph.initializer) == 2 * 24 + 1
        assert file_size(out / "out.onnx") <= size


# -- overwriting a model saved with external data (fast) ---------------------------------------------------
def _weights(model_path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in load_model(model_path).graph.initializer}


def test_overwrite_alternates_data_file_and_removes_the_old_one(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    first, second, third = (wide_mlp(seed=s, d=64, layers=2) for s in (1, 2, 3))
    save_model(first, out, external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    save_model(second, out, external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.1.data"]
    expected = {t.name: numpy_helper.to_array(t) for t in second.graph.initializer}
    assert all(np.array_equal(expected[k], v) for k, v in _weights(out).items())
    save_model(third, out, external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    save_model(first, out, external_data=False)  # inline over a pair: the data file is not left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("crash_at", ["data", "model"])
def test_crash_while_overwriting_leaves_a_matching_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        crash_at: str) -> None:
    out = tmp_path / "m.onnx"
    old, new = wide_mlp(seed=1, d=64, layers=2), wide_mlp(seed=2, d=64, layers=2)
    save_model(old, out, external_data=True)
    before = _weights(out)
    real_replace = os.replace

    def crashing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if (Path(dst).suffix == ".data") == (crash_at == "data"):
            raise KeyboardInterrupt  # Ctrl-C (or a kill) exactly before this rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(KeyboardInterrupt):
        save_model(new, out, external_data=True)
    monkeypatch.setattr(os, "replace", real_replace)
    after = _weights(out)  # the old model with its own data, whichever rename was cut off
    assert after.keys() == before.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnxprune-tmp")]
    save_model(new, out, external_data=True)  # the next save succeeds and cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.1.data"]


def test_plan_save_missing_folder_is_a_typed_error(tmp_path: Path) -> None:
    from onnxprune.structured.prune import prune_structured

    plan = prune_structured(wide_mlp(d=16, layers=2), ratio=0.5).plan
    with pytest.raises(OutputError, match="cannot write plan .*missing.*create the folder"):
        plan.save(tmp_path / "missing" / "plan.json")
    assert plan.save(tmp_path / "plan.json").is_file()


# -- what keeps validated runs small (fast) ----------------------------------------------------------------
def test_streamed_zeroed_reference_equals_the_in_memory_one(tmp_path: Path) -> None:
    from onnxprune.structured.oracle import write_zeroed_reference, zeroed_reference
    from onnxprune.structured.prune import prune_structured

    model = wide_mlp(d=32, layers=3)
    result = prune_structured(model, ratio=0.5)
    reference = zeroed_reference(model, result.dg, result.plan)
    expected = {t.name: numpy_helper.to_array(t) for t in reference.graph.initializer}
    path = write_zeroed_reference(model, result.dg, result.plan, tmp_path / "ref.onnx")
    assert (tmp_path / "ref.onnx.data").is_file()
    written = _weights(path)
    assert written.keys() == expected.keys()
    assert all(np.array_equal(expected[k], written[k]) and expected[k].dtype == written[k].dtype for k in expected)
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert sum(map(np.count_nonzero, written.values())) < sum(map(np.count_nonzero, original.values()))


def test_save_model_replace_writes_the_replacement_inline_and_external(tmp_path: Path) -> None:
    model = wide_mlp(d=32, layers=2)

    def negate(t: TensorProto) -> TensorProto:
        return numpy_helper.from_array(-numpy_helper.to_array(t), t.name)

    before = model.SerializeToString()
    for external in (False, True):
        out = save_model(model, tmp_path / f"m{external}.onnx", external_data=external, replace=negate)
        written = _weights(out)
        assert all(np.array_equal(written[t.name], -numpy_helper.to_array(t)) for t in model.graph.initializer)
    assert model.SerializeToString() == before  # the model is only read


def test_weightless_load_reads_the_graph_and_still_checks_the_data_file(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    save_model(wide_mlp(d=64, layers=2), path, external_data=True)
    skeleton = load_model(path, weights=False)
    assert [t.data_location for t in skeleton.graph.initializer if t.name.endswith("_w")] == [TensorProto.EXTERNAL] * 3
    assert skeleton.ByteSize() < 4096
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="external data file 'm.onnx.data' is truncated"):
        load_model(path, weights=False)


def test_validating_against_a_path_compares_the_same_outputs(tmp_path: Path) -> None:
    from onnxprune.runtime.validate import validate_models
    from onnxprune.sparse.sparsify import sparsify

    model = wide_mlp(d=64, layers=2)
    path = save_model(model, tmp_path / "m.onnx", external_data=True)
    candidate = sparsify(model, sparsity=0.5).model
    from_memory = validate_models(model, candidate, samples=3, report_only=True).to_dict()
    from_path = validate_models(path, candidate, samples=3, report_only=True).to_dict()
    assert from_path["comparisons"] == from_memory["comparisons"]
    assert from_path["checks"] == from_memory["checks"]
    assert from_memory["comparisons"]["cpu"]["outputs"][0]["max_abs"] > 0  # a real difference was measured
