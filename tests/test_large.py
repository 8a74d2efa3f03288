"""Memory on big models: each step runs in a fresh process and its peak RSS is read from the kernel (VmHWM).

The bound is on *growth*: peak RSS minus the peak of the same command on a tiny model (the interpreter,
onnx and onnxruntime alone take ~100 MB), divided by the model's size on disk. tools/bench_large.py
measures the same steps on a model over 2 GB.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from bench_large import STEPS, measure, write_wide_mlp  # noqa: E402

from onnxprune.io import file_size, load_model  # noqa: E402

BOUND = 2.5

pytestmark = pytest.mark.slow


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


@pytest.mark.parametrize(("step", "bound"), [
    ("load", 1.3),  # weights read once, the checker runs on a weightless view
    ("load+save", 1.3),  # saving streams one tensor at a time and never edits the model
    ("unstructured-novalidate", BOUND),
    ("nm", BOUND),
])
def test_peak_memory_within_bound(models: tuple[Path, Path, int], tmp_path: Path, step: str, bound: float) -> None:
    ratio = growth(step, models, tmp_path)
    assert ratio < bound, f"{step}: peak grew by {ratio:.2f}x the model's size (bound {bound}x)"


@pytest.mark.xfail(strict=True, reason="structured pruning copies the model in prune_structured and again in "
                                      "apply_plan (load_model deep-copies): measured 3.6x; see tools/bench_large.py")
def test_structured_peak_memory_within_bound(models: tuple[Path, Path, int], tmp_path: Path) -> None:
    ratio = growth("structured-novalidate", models, tmp_path)
    assert ratio < BOUND, f"peak grew by {ratio:.2f}x the model's size"


@pytest.mark.xfail(strict=True, reason="validation deep-copies both models and builds onnxruntime sessions from "
                                      "serialized bytes (2.9x per session vs 1.0x from a file): measured ~9x")
def test_validated_prune_peak_memory_within_bound(models: tuple[Path, Path, int], tmp_path: Path) -> None:
    ratio = growth("unstructured", models, tmp_path)
    assert ratio < BOUND, f"peak grew by {ratio:.2f}x the model's size"


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
