"""Input generation, npz loading and batching (onnxprune.runtime.feeds)."""

from __future__ import annotations

import numpy as np
import pytest
from builders import conv_bn_relu, mlp, seq_tokens

from onnxprune.core.errors import CalibrationError, ConfigError, ModelLoadError
from onnxprune.runtime.feeds import (
    concrete_shape,
    fixed_batch_size,
    input_specs,
    iter_batches,
    load_npz_feeds,
    num_samples,
    random_feeds,
)


def test_input_specs_read_names_dtypes_and_dynamic_dims():
    specs = input_specs(seq_tokens())
    assert [(s.name, s.dtype, s.shape) for s in specs] == [
        ("ids", np.dtype(np.int64), ("N", "seq")),
        ("scale", np.dtype(np.float32), ("N", 1, 1)),
    ]
    assert fixed_batch_size(specs) is None
    assert fixed_batch_size(input_specs(conv_bn_relu())) == 1


def test_input_specs_from_path_and_missing_path(tmp_path):
    import onnx

    path = tmp_path / "m.onnx"
    onnx.save(mlp(), path)
    assert input_specs(path)[0].shape == ("N", 16)
    with pytest.raises(ModelLoadError, match="no such file"):
        input_specs(tmp_path / "nope.onnx")


def test_random_feeds_are_seeded_and_shaped():
    a = random_feeds(seq_tokens(), seed=3, batch=2, dims={"seq": 5})
    b = random_feeds(seq_tokens(), seed=3, batch=2, dims={"seq": 5})
    c = random_feeds(seq_tokens(), seed=4, batch=2, dims={"seq": 5})
    assert a["ids"].shape == (2, 5) and a["ids"].dtype == np.int64
    assert a["scale"].shape == (2, 1, 1) and a["scale"].dtype == np.float32
    assert np.array_equal(a["ids"], b["ids"]) and np.array_equal(a["scale"], b["scale"])
    assert not np.array_equal(a["scale"], c["scale"])
    assert a["ids"].min() >= 0 and a["ids"].max() < 8  # default int range [0, 8) fits the vocab


def test_batch_wins_on_the_first_axis_and_dims_fill_it_otherwise():
    spec = input_specs(mlp())[0]
    assert concrete_shape(spec, batch=4, dims={"N": 7}) == (4, 16)
    assert concrete_shape(spec, dims={"N": 7}) == (7, 16)
    assert concrete_shape(spec) == (1, 16)
    # a fixed first dim is never overridden
    assert random_feeds(conv_bn_relu(), seed=0, batch=8)["x"].shape == (1, 3, 8, 8)


def test_dynamic_non_batch_dim_without_value_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"input 'ids' axis 1 is dynamic \('seq'\).*--dim ids:1=VALUE"):
        random_feeds(seq_tokens(), seed=0)


def test_random_feeds_rejects_bad_batch():
    with pytest.raises(ConfigError, match="batch must be at least 1"):
        random_feeds(mlp(), seed=0, batch=0)


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_load_npz_ok_and_extra_keys_ignored(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    path = _save(tmp_path / "in.npz", x=x, labels=np.arange(5))
    feeds = load_npz_feeds(path, mlp())
    assert list(feeds) == ["x"]
    assert np.array_equal(feeds["x"], x)
    assert num_samples(feeds) == 5


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"y": np.zeros((2, 16), np.float32)}, r"lacks model input\(s\) \['x'\]"),
        ({"x": np.zeros((2, 16), np.float64)}, r"dtype float64, the model wants float32.*astype"),
        ({"x": np.zeros((2, 15), np.float32)}, "size 15 on axis 1, the model wants 16"),
        ({"x": np.zeros((16,), np.float32)}, "rank must match"),
    ],
)
def test_load_npz_rejects_what_does_not_fit(tmp_path, arrays, match):
    path = _save(tmp_path / "in.npz", **arrays)
    with pytest.raises(CalibrationError, match=match):
        load_npz_feeds(path, mlp())


def test_load_npz_checks_named_dims_and_sample_counts_across_inputs(tmp_path):
    ids = np.zeros((3, 4), np.int64)
    path = _save(tmp_path / "a.npz", ids=ids, scale=np.ones((2, 1, 1), np.float32))
    with pytest.raises(CalibrationError, match="different sample counts"):
        load_npz_feeds(path, seq_tokens())
    ok = _save(tmp_path / "b.npz", ids=ids, scale=np.ones((3, 1, 1), np.float32))
    assert num_samples(load_npz_feeds(ok, seq_tokens())) == 3


def test_load_npz_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CalibrationError, match="no such file"):
        load_npz_feeds(tmp_path / "nope.npz", mlp())
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(CalibrationError, match="not a readable .npz"):
        load_npz_feeds(bad, mlp())


def test_iter_batches_cuts_axis_zero_with_a_short_last_batch():
    feeds = {"a": np.arange(10).reshape(5, 2), "b": np.arange(5)}
    batches = list(iter_batches(feeds, 2))
    assert [b["a"].shape[0] for b in batches] == [2, 2, 1]
    assert np.array_equal(np.concatenate([b["b"] for b in batches]), feeds["b"])
    with pytest.raises(ConfigError, match="at least 1"):
        list(iter_batches(feeds, 0))
    with pytest.raises(CalibrationError, match="different sample counts"):
        list(iter_batches({"a": np.zeros(3), "b": np.zeros(4)}, 2))


@pytest.mark.parametrize("quantized", [False, True])
def test_generated_indices_stay_inside_the_tables_they_index(quantized: bool) -> None:
    """BERT's token_type_ids index a 2-row table: ids drawn from [0, 8) made onnxruntime fail (out-of-range
    Gather), so every text model looked as if it ran at no size. Bounds follow Cast to Gather's indices. A QDQ
    model's tables are int8 behind DequantizeLinear (the quantized BERT looked unrunnable the same way)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    types = numpy_helper.from_array(np.ones((2, 4), np.float32), "type_table")
    words = numpy_helper.from_array(np.ones((50, 4), np.float32), "word_table")
    nodes = [helper.make_node("Gather", ["type_table", "token_type_ids"], ["t"]),
             helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
             helper.make_node("Gather", ["word_table", "ids32"], ["w"]),
             helper.make_node("Add", ["t", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "text", [helper.make_tensor_value_info(n, TensorProto.INT64, [1, 16])
                        for n in ("input_ids", "token_type_ids")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4])], [types, words])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if quantized:  # each table becomes int8 storage read through DequantizeLinear, as quantize_static writes it
        for table in model.graph.initializer[:2]:
            name = table.name
            table.CopyFrom(numpy_helper.from_array(np.ones(table.dims, np.int8), f"{name}_q"))
            model.graph.initializer.append(numpy_helper.from_array(np.float32(0.5), f"{name}_s"))
            model.graph.node.insert(0, helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s"], [name]))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for seed in range(5):
        feeds = random_feeds(model, seed=seed)
        assert feeds["token_type_ids"].max() < 2 and feeds["input_ids"].max() < 8
        session.run(None, feeds)
    assert random_feeds(model, seed=0, int_high=100)["input_ids"].max() < 50
