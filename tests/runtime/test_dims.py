"""Sizes for dynamic input axes: given, read from data, or chosen and confirmed (onnxprune.runtime.dims)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import (
    declare_shape,
    flatten_gemm,
    paddle_classifier,
    seq_tokens,
    symbolic_inputs,
    text_classifier,
    vinfo,
)

from onnxprune.core.errors import ConfigError
from onnxprune.core.stats import model_stats
from onnxprune.runtime.dims import describe_assumed, resolve_dims
from onnxprune.runtime.feeds import input_specs, random_feeds

MODELS = Path(__file__).resolve().parents[2] / "models"
#: MACs of models/digits_cnn.onnx at its real input size, 8 x 8 (README, architectures table).
DIGITS_MACS = 2_083_456


def _values(res) -> dict[tuple[str, int], tuple[int, str]]:
    return {(c.input, c.axis): (c.value, c.source) for c in res.chosen}


def test_text_model_gets_batch_1_and_a_sequence_length_it_accepts():
    res = resolve_dims(text_classifier())
    assert _values(res) == {
        ("input_ids", 0): (1, "batch"), ("input_ids", 1): (32, "candidate"),
        ("attention_mask", 0): (1, "batch"), ("attention_mask", 1): (32, "candidate"),
    }
    assert res.confirmed is True
    assert res.dims == {"input_ids:0": 1, "input_ids:1": 32, "attention_mask:0": 1, "attention_mask:1": 32}
    assert describe_assumed(res.report()) == "sequence=32 (assumed; set with --dim)"
    assert describe_assumed(res.report(), with_batch=True) == "batch=1, sequence=32 (assumed; set with --dim)"


def test_a_candidate_the_model_refuses_is_skipped():
    """The position table has 16 rows: 32, 64 and 128 fail in onnxruntime (Slice gives 16 rows, Add fails)."""
    res = resolve_dims(text_classifier(max_len=16))
    assert _values(res)[("input_ids", 1)] == (16, "candidate") and res.confirmed is True
    feeds = random_feeds(text_classifier(max_len=16), seed=0, dims=res.dims)
    assert feeds["input_ids"].shape == (1, 16)


@pytest.mark.parametrize("key", ["sequence", "input_ids:1", "input_ids:sequence"])
def test_user_dims_by_name_axis_or_input_and_name(key: str):
    res = resolve_dims(text_classifier(), dims={key: 16})
    assert _values(res)[("input_ids", 1)] == (16, "user")
    # attention_mask shares the name 'sequence': the user's size, not an assumed one
    assert _values(res)[("attention_mask", 1)] == (16, "user")
    assert res.confirmed is None and res.unused == ()
    assert describe_assumed(res.report()) == ""


def test_user_keys_that_name_no_dynamic_axis_are_reported():
    res = resolve_dims(text_classifier(), dims={"seqq": 16, "input_ids:5": 3})
    assert res.unused == ("input_ids:5", "seqq")
    assert _values(res)[("input_ids", 1)] == (32, "candidate")


def test_sizes_come_from_data_but_not_its_sample_count(tmp_path: Path):
    data = tmp_path / "calib.npz"
    np.savez(data, input_ids=np.zeros((5, 12), np.int64), attention_mask=np.ones((5, 12), np.int64))
    res = resolve_dims(text_classifier(), data=[None, data])
    assert _values(res)[("input_ids", 1)] == (12, "data")
    assert _values(res)[("input_ids", 0)] == (1, "batch")
    assert res.confirmed is None  # nothing had to be tried
    assert describe_assumed(res.report()) == "sequence=12 (from data) (assumed; set with --dim)"


def test_paddle_dims_minus_one_question_mark_and_unnamed_are_all_dynamic():
    model = paddle_classifier()
    assert input_specs(model)[0].shape == (None, 3, "?", None)  # -1 is not a size
    res = resolve_dims(model)
    assert _values(res) == {("x", 0): (1, "batch"), ("x", 2): (224, "candidate"), ("x", 3): (224, "candidate")}
    assert describe_assumed(res.report()) == "x:2=224, x:3=224 (assumed; set with --dim)"
    stats = model_stats(model, dims=res.dims)
    assert stats.macs > 0 and not stats.unknown_macs


def test_question_mark_for_several_axes_takes_one_value_per_axis():
    """One '?' name for the batch and a spatial axis: addressing by axis keeps them apart."""
    model = paddle_classifier()
    declare_shape(model.graph.input[0], ["?", 3, "?", "?"])
    res = resolve_dims(model, dims={"x:2": 16, "x:3": 20})
    assert res.dims["x:0"] == 1 and res.dims["x:2"] == 16 and res.dims["x:3"] == 20
    assert random_feeds(model, seed=0, dims=res.dims)["x"].shape == (1, 3, 16, 20)
    # MACs follow each axis: conv1 (stride 2, 8 out, 3x3x3) + conv2 (8 out, 3x3x8) at 8x10, + the Gemm
    assert model_stats(model, dims=res.dims).macs == 8 * 10 * 8 * 27 + 8 * 10 * 8 * 72 + 5 * 8


def test_symbolic_nchw_is_never_counted_at_1x1():
    """Issue: digits_cnn with [N, C, H, W] all symbolic reported 74,656 MACs (H = W = 1) without a word."""
    model = symbolic_inputs(onnx.load(str(MODELS / "digits_cnn.onnx")))
    res = resolve_dims(model)
    assert _values(res) == {("input", 0): (1, "batch"), ("input", 1): (1, "weights"),
                            ("input", 2): (224, "candidate"), ("input", 3): (224, "candidate")}
    assert describe_assumed(res.report()) == "C=1 (from weights), H=224, W=224 (assumed; set with --dim)"
    assert model_stats(model, dims=res.dims).macs > DIGITS_MACS
    assert model_stats(model, dims=resolve_dims(model, dims={"H": 8, "W": 8}).dims).macs == DIGITS_MACS


def test_no_size_that_runs_is_an_error_naming_the_axes_or_unconfirmed_when_not_required():
    model = flatten_gemm()  # Flatten -> Gemm accepts 3 x 3 only; no candidate is 3
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    with pytest.raises(ConfigError, match=r"'x' axis 2 \(H\), 'x' axis 3 \(W\).*--dim x:2=VALUE"):
        resolve_dims(model)
    res = resolve_dims(model, required=False)
    assert res.confirmed is False and "(unconfirmed)" in describe_assumed(res.report())
    assert resolve_dims(model, dims={"H": 3, "W": 3}).confirmed is None


def test_static_model_needs_nothing():
    res = resolve_dims(onnx.load(str(MODELS / "digits_cnn.onnx")))
    assert [(c.axis, c.source) for c in res.chosen] == [(0, "batch")]  # 'batch' only
    assert res.report() == [{"input": "input", "axis": 0, "name": "batch", "value": 1, "source": "batch"}]


def test_integer_input_axis_1_is_sequence_like_even_unnamed():
    model = seq_tokens()
    declare_shape(model.graph.input[0], ["N", None])
    res = resolve_dims(model)
    assert _values(res)[("ids", 1)] == (32, "candidate")


def test_rank_1_dynamic_axis_is_not_taken_for_a_batch():
    from builders import make_model
    from onnx import helper

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vinfo("x", ["frames"])], [vinfo("y", ["frames"])])
    assert _values(resolve_dims(model)) == {("x", 0): (32, "candidate")}


def test_audio_input_too_short_for_the_first_conv_gets_a_longer_length():
    """A Conv1d of kernel 100 refuses 32 and 64 samples; 128 is the first candidate that runs."""
    from builders import audio_encoder

    res = resolve_dims(audio_encoder())
    assert _values(res) == {("input_values", 0): (1, "batch"), ("input_values", 1): (128, "candidate")}
    assert res.confirmed is True


def test_time_major_input_takes_the_batch_from_its_name_not_its_position():
    from builders import make_model
    from onnx import helper

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vinfo("x", ["sequence", "batch", 4])],
                       [vinfo("y", ["sequence", "batch", 4])])
    assert _values(resolve_dims(model)) == {("x", 0): (32, "candidate"), ("x", 1): (1, "batch")}
