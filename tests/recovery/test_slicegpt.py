"""Rotate + slice (SliceGPT) against plain width pruning at the same width, measured in onnxruntime."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from onnxprune.core.stats import model_stats
from onnxprune.recovery.slicegpt import slice_stream
from onnxprune.recovery.width import prune_width
from onnxprune.runtime.session import create_session, run_session
from tests.builders import prenorm_stack


def _run(model: onnx.ModelProto | os.PathLike[str], x: np.ndarray) -> np.ndarray:
    return run_session(create_session(model), {"x": x})["logits"]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_slicegpt_beats_plain_width_and_proves_rotation() -> None:
    model = prenorm_stack()
    r = np.random.default_rng(1)
    calib = [{"x": r.standard_normal((32, 5, 4)).astype(np.float32)} for _ in range(2)]
    x = r.standard_normal((64, 5, 4)).astype(np.float32)  # held out
    ref = _run(model, x)
    sliced = slice_stream(model, ratio=0.25, calib=calib, refit=False)
    plain = prune_width(model, ratio=0.25, calib=calib, refit=False)
    for m in (sliced.model, sliced.rotated):
        onnx.checker.check_model(m, full_check=True)
        onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    np.testing.assert_allclose(_run(sliced.rotated, x), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
    assert sliced.report["width_after"] == 12
    assert model_stats(model).params - model_stats(sliced.model).params > 0
    c_slice, c_plain = _cos(ref, _run(sliced.model, x)), _cos(ref, _run(plain.model, x))
    assert c_slice > c_plain and c_slice > 0.99, (c_slice, c_plain)
    refit = slice_stream(model, ratio=0.25, calib=calib, refit=True)
    assert _cos(ref, _run(refit.model, x)) >= c_slice - 1e-4


def test_a_handed_over_model_is_released_once_rotated_and_kept_when_refused() -> None:
    """A one-element list hands the input over: emptied once rotation is known possible (so its memory can go
    before calibration, rotation and re-fit), with the same result as slicing the model itself; a model
    refused for rotation stays in it and is pruned plainly (the digits transformer is post-norm)."""
    from collections.abc import Iterator
    from pathlib import Path

    from onnxprune.recovery.slicegpt import prune_stream_width

    model = prenorm_stack()
    r = np.random.default_rng(2)
    calib = [{"x": r.standard_normal((32, 5, 4)).astype(np.float32)} for _ in range(2)]
    held = [onnx.ModelProto.FromString(model.SerializeToString())]

    class Released:  # calibration data that checks the input is gone whenever it is read
        def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
            assert held == [], "calibration ran while the input was still held"
            return iter(calib)

    handed = prune_stream_width(held, ratio=0.25, calib=Released())
    assert held == [] and handed[2]["method"] == "rotate"
    direct = prune_stream_width(model, ratio=0.25, calib=calib)
    for a, b in zip(handed[:2], direct[:2], strict=True):
        assert a is not None and b is not None and a.SerializeToString() == b.SerializeToString()
    models = Path(__file__).resolve().parents[2] / "models"
    post = onnx.load(models / "digits_transformer.onnx")
    held = [post]
    _, rotated, report = prune_stream_width(held, ratio=0.25, calib=str(models / "digits_transformer_calib.npz"))
    assert held == [post] and report["method"] == "plain"
    assert rotated is not None and "Shape" not in {n.op_type for n in rotated.graph.node} - \
        {n.op_type for n in post.graph.node}  # plain: the exactly rewritten model before the cut, not a rotation


def test_the_rotated_reference_is_a_file_with_external_data_in_the_scratch_folder(tmp_path) -> None:
    """With a scratch folder, the exact rotated model (the re-fit's reference, the rotation proof's candidate)
    is a file there whose weights are external data, not a model in memory; the prepared model written on
    the way is gone; and the result is what slicing without a scratch folder gives, byte for byte."""
    from pathlib import Path

    model = prenorm_stack()
    r = np.random.default_rng(3)
    calib = [{"x": r.standard_normal((32, 5, 4)).astype(np.float32)} for _ in range(2)]
    on_disk = slice_stream(model, ratio=0.25, calib=calib, scratch=tmp_path)
    assert isinstance(on_disk.rotated, Path) and on_disk.rotated.parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rotated.onnx", "rotated.onnx.data"]
    stored = onnx.load(on_disk.rotated, load_external_data=False)
    external = [t.name for t in stored.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) == 4  # the FFN readers and writers: every tensor of 1 KB or more
    x = r.standard_normal((16, 5, 4)).astype(np.float32)
    ref = _run(model, x)
    np.testing.assert_allclose(_run(on_disk.rotated, x), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
    in_memory = slice_stream(model, ratio=0.25, calib=calib)
    assert isinstance(in_memory.rotated, onnx.ModelProto)
    assert on_disk.model.SerializeToString() == in_memory.model.SerializeToString()
    assert on_disk.report == in_memory.report and len(on_disk.report["refit"]) >= 3


@pytest.mark.parametrize("name", ["tv_vit_b_16", "tiny_gpt"])
def test_preparing_with_the_fold_passed_in_equals_preparing_a_frozen_folded_copy(name: str) -> None:
    """The rotation is prepared from copies without weight data (the fold passed in) and must prepare
    exactly what freezing and folding a full copy first prepared. torchvision's ViT needs the freeze after
    the fold: folding a head-size piece makes a ``Slice`` of a ``Shape`` static in each block."""
    from pathlib import Path

    from onnxprune.recovery.slicegpt import _prepare
    from onnxprune.recovery.width import frozen_stream
    from onnxprune.structured.rotate import prepare_rotation

    model = onnx.load(Path(__file__).resolve().parents[2] / "models" / f"{name}.onnx")
    lean = _prepare(model)[0]
    full = prepare_rotation(frozen_stream(model).model)
    assert lean.model.SerializeToString() == full.model.SerializeToString()
    assert (lean.norms, lean.stream, lean.width) == (full.norms, full.stream, full.width)


@pytest.mark.slow  # about 20 s alone (a minute and more on a busy machine)
def test_width_mode_proves_a_rotation_whose_file_holds_constant_nodes_in_external_data() -> None:
    """tiny_gpt keeps shape pieces and tables in Constant nodes, which the save puts in external data when
    1 KB or more: the rotation proof and the re-fit read the rotated model's file without its weights, so
    they must still read those values (shape inference folds them)."""
    from pathlib import Path

    from onnxprune.pipeline import prune

    models = Path(__file__).resolve().parents[2] / "models"
    result = prune(models / "tiny_gpt.onnx", {"mode": "width", "ratio": 0.25,
                                              "calib": str(models / "tiny_gpt_calib.npz")})
    width = result.report["width"]
    assert width["method"] == "rotate" and width["rotation_check"]["passed"] is True
    assert all(c["passed"] for c in width["rotation_check"]["checks"])
    assert len(width["refit"]) >= 4


def _half(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` stored and run in float16 (weights, inputs and outputs), as a float16 conversion writes it."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in (*out.graph.input, *out.graph.output):
        vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    return out


def test_a_float16_model_is_rotated_in_float16_and_proven_at_its_precision(tmp_path) -> None:
    """A float16 pre-norm model: the RMSNorm that replaces each LayerNorm computes in float32 between two
    Casts (float32 constants cannot meet a float16 stream), the rotation check is judged at float16's
    precision, and every weight stays float16."""
    from onnxprune.pipeline import prune

    model = _half(prenorm_stack())
    r = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=r.standard_normal((64, 5, 4)).astype(np.float16))
    result = prune(model, {"mode": "width", "ratio": 0.25, "calib": str(tmp_path / "calib.npz")},
                   output=tmp_path / "out.onnx")
    width = result.report["width"]
    assert width["method"] == "rotate" and width["rotation_check"]["passed"] is True
    assert 1e-4 < width["rotation_check"]["atol"] <= 1e-2  # float16's tolerance, not float32's 1e-4
    pruned = onnx.load(tmp_path / "out.onnx")
    weights = [t for t in pruned.graph.initializer if len(t.dims) == 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    x = r.standard_normal((16, 5, 4)).astype(np.float16)
    ref, got = _run(model, x).astype(np.float64), _run(pruned, x).astype(np.float64)
    assert _cos(ref, got) > 0.99


def _dead_channels(model: onnx.ModelProto, width: int, dead: int) -> onnx.ModelProto:
    """``model`` with the last ``dead`` channels of its width-``width`` stream zero everywhere: every float
    initializer whose last axis is the stream's has those entries zeroed (the writers then never write them)."""
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        value = numpy_helper.to_array(t)
        if value.dtype == np.float32 and value.ndim and value.shape[-1] == width:
            value = value.copy()
            value[..., width - dead:] = 0
            t.CopyFrom(numpy_helper.from_array(value, t.name))
    return out


def test_slicing_a_dead_part_of_an_rms_stream_is_exact() -> None:
    """Llama's RMSNorm (in primitives, with same-type Casts) averages its squares over the channels: once the
    stream is sliced it must still divide by the original width. With the sliced directions carrying nothing,
    slicing is then exact; dividing by the kept width would scale every norm's output by sqrt(16/12)."""
    from onnx import TensorProto

    model = _dead_channels(prenorm_stack(norm="rms", gated=True, cast=TensorProto.FLOAT), 16, 4)
    r = np.random.default_rng(3)
    calib = [{"x": r.standard_normal((32, 5, 4)).astype(np.float32)}]
    x = r.standard_normal((16, 5, 4)).astype(np.float32)
    ref = _run(model, x)
    sliced = slice_stream(model, ratio=0.25, calib=calib, refit=False)
    assert sliced.report["width_after"] == 12
    np.testing.assert_allclose(_run(sliced.rotated, x), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
    np.testing.assert_allclose(_run(sliced.model, x), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


LM_EXPORTS = ("hf_gpt2_legacy", "hf_gpt2_dynamo", "hf_llama_gqa_legacy", "hf_llama_gqa_dynamo")


@pytest.mark.slow  # a few seconds each alone
@pytest.mark.parametrize("name", LM_EXPORTS)
def test_hugging_face_language_model_exports_rotate_exactly(name: str) -> None:
    """GPT-2 (Conv1D's flattening Reshape before each Gemm) and Llama (RMSNorm in primitives between
    same-type Casts) exported by both torch exporters: --mode width rotates them, the rotation proven exact
    on the export's example inputs. Skipped without the real-export folder (see tests/test_real_exports.py)."""
    from pathlib import Path

    from onnxprune.pipeline import prune

    folder = Path(os.environ.get("ONNXPRUNE_REAL_EXPORTS", Path.home() / ".cache/onnxprune/real-exports"))
    if not (folder / f"{name}.onnx").exists():
        pytest.skip(f"no {name}.onnx in {folder}")
    result = prune(folder / f"{name}.onnx", {"mode": "width", "ratio": 0.25, "bench": False,
                                            "calib": str(folder / f"{name}.inputs.npz")})
    width = result.report["width"]
    assert width["method"] == "rotate", width.get("why_not_rotated")
    assert width["rotation_check"]["passed"] is True and width["width_after"] == 48
