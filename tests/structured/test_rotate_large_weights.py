"""Rotation with weights above ``MAX_ELEMENTS``: those are copied without data, folded or filled once from the
input, then rotated into a copy made without them. The rewrites must stay exact and never touch the input."""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.core.shapefold import MAX_ELEMENTS
from onnxprune.runtime.session import create_session, run_session
from onnxprune.structured.rotate import prepare_rotation, rotate, to_rms
from tests.builders import prenorm_stack


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return run_session(create_session(model), {"x": x})["logits"]


def test_rotation_of_large_weights_is_exact_and_leaves_the_input_alone() -> None:
    model = prenorm_stack(d=72, hidden=96, t=5)  # FFN weights of 6912 values, positions of 360
    assert max(int(np.prod(t.dims)) for t in model.graph.initializer) > MAX_ELEMENTS
    before = model.SerializeToString()
    x = np.random.default_rng(1).standard_normal((8, 5, 4)).astype(np.float32)
    ref = _run(model, x)
    prep = prepare_rotation(model)
    exact = to_rms(prep.model, prep.norms, prep.width)
    onnx.checker.check_model(exact, full_check=True)
    np.testing.assert_allclose(_run(exact, x), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((72, 72)))
    rotated = to_rms(rotate(prep, q), prep.norms, prep.width, inplace=True)
    onnx.checker.check_model(rotated, full_check=True)
    np.testing.assert_allclose(_run(rotated, x), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
    assert model.SerializeToString() == before
    # every initializer of both results holds its values (none left without data)
    for m in (prep.model, rotated):
        for t in m.graph.initializer:
            assert onnx.numpy_helper.to_array(t).size == int(np.prod(t.dims))
