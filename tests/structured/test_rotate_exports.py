"""Rotation through what exporters write around the stream: same-type Casts and RMSNorms in primitives (Llama),
a Reshape that flattens the tokens before a Gemm (GPT-2's Conv1D); refused, with the reason, where not linear."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core.errors import UnsupportedModelError
from onnxprune.runtime.session import create_session, run_session
from onnxprune.structured.rotate import prepare_rotation, rotate, to_rms
from tests.builders import prenorm_stack


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return run_session(create_session(model), {"x": x})["logits"]


def _assert_rotation_exact(model: onnx.ModelProto) -> None:
    """The prepared model and the model rotated by a random orthogonal Q both give the input's outputs."""
    x = np.random.default_rng(1).standard_normal((8, 5, 4)).astype(np.float32)
    ref = _run(model, x)
    prep = prepare_rotation(model)
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((prep.width, prep.width)))
    for candidate in (to_rms(prep.model, prep.norms, prep.width), to_rms(rotate(prep, q), prep.norms, prep.width)):
        onnx.checker.check_model(candidate, full_check=True)
        np.testing.assert_allclose(_run(candidate, x), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)


def test_llama_rmsnorm_with_same_type_casts_rotates_exactly() -> None:
    model = prenorm_stack(norm="rms", gated=True, cast=TensorProto.FLOAT)
    prep = prepare_rotation(model)
    assert len(prep.norms) == 3 and prep.width == 16
    ops = {n.op_type for n in prep.model.graph.node}
    assert "Cast" not in ops  # bypassed: the identity
    gammas = [n for n in prep.model.graph.node if n.op_type == "Mul" and any("gamma" in i for i in n.input)]
    assert not gammas  # folded into the readers
    _assert_rotation_exact(model)


def test_gpt2_conv1d_flatten_rotates_exactly() -> None:
    """LayerNorm → Reshape([-1, D]) → Gemm: the reshape keeps the channel axis last and whole, so the
    LayerNorm's scale and shift fold into the Gemm behind it and the stream rotates."""
    model = prenorm_stack(flatten=True)
    prep = prepare_rotation(model)
    assert len(prep.norms) == 3
    _assert_rotation_exact(model)


def test_a_cast_to_another_type_is_refused_with_both_types() -> None:
    model = prenorm_stack(norm="rms", cast=TensorProto.DOUBLE)
    with pytest.raises(UnsupportedModelError, match=r"\(Cast\), a cast from float to double, which is not linear"):
        prepare_rotation(model)


def _split_first_norm(model: onnx.ModelProto) -> onnx.ModelProto:
    """The first LayerNorm's output reshaped to ``[-1, T, 4, 4]`` and back before its readers: a reshape
    that splits the channel axis."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    pos, ln = next((i, n) for i, n in enumerate(graph.node) if n.op_type == "LayerNormalization")
    y = ln.output[0]
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == y:
                node.input[k] = "merged"
    graph.initializer.extend([numpy_helper.from_array(np.array([-1, 5, 4, 4], dtype=np.int64), "split_shape"),
                              numpy_helper.from_array(np.array([-1, 5, 16], dtype=np.int64), "merge_shape")])
    graph.node.insert(pos + 1, helper.make_node("Reshape", [y, "split_shape"], ["split"], name="split_channels"))
    graph.node.insert(pos + 2, helper.make_node("Reshape", ["split", "merge_shape"], ["merged"], name="merge"))
    onnx.checker.check_model(out, full_check=True)
    return out


def test_a_reshape_that_splits_the_channel_axis_is_refused_with_the_shapes() -> None:
    model = _split_first_norm(prenorm_stack(flatten=True))
    why = r"'split_channels' \(Reshape\), which does not keep the channel axis last and whole \(shape " \
          r"\[\d+, 5, 16\] to \[\d+, 5, 4, 4\]\)"
    with pytest.raises(UnsupportedModelError, match=why):
        prepare_rotation(model)
