"""Stream rotation (SliceGPT's invariance): exact before slicing, proven in onnxruntime; refused where impossible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.core.errors import UnsupportedModelError
from onnxprune.runtime.session import create_session, run_session
from onnxprune.structured.rotate import prepare_rotation, rotate, to_rms
from tests.builders import prenorm_stack

MODELS = Path(__file__).resolve().parents[2] / "models"


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return run_session(create_session(model), {"x": x})["logits"]


@pytest.fixture(scope="module")
def case() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    model = prenorm_stack()
    x = np.random.default_rng(1).standard_normal((8, 5, 4)).astype(np.float32)
    return model, x, _run(model, x)


def test_centred_rms_model_is_exact(case) -> None:
    model, x, ref = case
    prep = prepare_rotation(model)
    assert prep.width == 16 and len(prep.norms) == 3
    exact = to_rms(prep.model, prep.norms, prep.width)
    onnx.checker.check_model(exact, full_check=True)
    assert not any(n.op_type == "LayerNormalization" for n in exact.graph.node)
    np.testing.assert_allclose(_run(exact, x), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)


def test_rotation_is_exact_before_slicing(case) -> None:
    model, x, ref = case
    prep = prepare_rotation(model)
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((16, 16)))
    rotated = to_rms(rotate(prep, q), prep.norms, prep.width)
    np.testing.assert_allclose(_run(rotated, x), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)


def test_rotation_without_centring_or_rms_is_not_exact(case) -> None:
    """The proof has teeth: rotating with the LayerNorms kept (not RMSNorms) changes the outputs."""
    model, x, ref = case
    prep = prepare_rotation(model)
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((16, 16)))
    wrong = _run(rotate(prep, q), x)
    assert np.abs(wrong - ref).max() > 1e-2 * np.abs(ref).max()


def test_non_orthogonal_q_refused(case) -> None:
    prep = prepare_rotation(case[0])
    with pytest.raises(UnsupportedModelError, match="orthogonal"):
        rotate(prep, np.ones((16, 16)))


@pytest.mark.parametrize("name, match", [("digits_transformer", "pre-norm"), ("tv_convnext_tiny", "stream")])
def test_rotation_refused_where_impossible(name: str, match: str) -> None:
    with pytest.raises(UnsupportedModelError, match=match):
        prepare_rotation(onnx.load(MODELS / f"{name}.onnx"))


def test_rotation_exact_on_vit() -> None:
    """torchvision's ViT (pre-norm; conv patches, class token, positions, torch attention): exact rotation."""
    from tests.structured.test_stream import _randomized

    model = _randomized(MODELS / "tv_vit_b_16.onnx")
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    run = lambda m: run_session(create_session(m), {"input": x})["logits"]  # noqa: E731
    ref = run(model)
    prep = prepare_rotation(model)
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((prep.width, prep.width)))
    rotated = to_rms(rotate(prep, q), prep.norms, prep.width)
    onnx.checker.check_model(rotated, full_check=True)
    np.testing.assert_allclose(run(rotated), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
