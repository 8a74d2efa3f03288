"""The residual stream's width through onnxruntime's fused norms (``structured/fused_stream.py``).

A hand-built graph holds each fused op on one stream: ``EmbedLayerNormalization`` (its ``embedding_sum``
output carried on as the stream), a fused ``Attention`` reading it, ``SkipLayerNormalization`` with beta, bias
and its ``input_skip_bias_sum`` output, ``FastGelu``, ``SkipSimplifiedLayerNormalization`` and the default
domain's ``SimplifiedLayerNormalization``. The oracle is a numpy re-implementation of the graph: it must
equal onnxruntime on the original model, and, run on the original weights with every stream axis sliced to
the kept channels, equal onnxruntime on the width-pruned model: a wrong axis, a parameter left uncut or cut
on the wrong axis, or a table sliced by rows shows as a mismatch or a failed session.

Then the real fused exports of ``~/.cache/onnxprune/fused-exports`` (``tools/fused_exports.py``; skipped
when absent): coverage with the stream and ``--mode width`` through the public API, as a user runs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core.errors import UnsupportedModelError
from onnxprune.recovery.width import prune_width
from onnxprune.structured.analysis import analyze
from onnxprune.structured.fused_stream import unfuse_skip_norms
from onnxprune.structured.stream import stream_group_ids, stream_rules

MS = "com.microsoft"
D, H, HEADS, F, V, P, OUT = 16, 16, 2, 24, 30, 12, 5
EPS = 1e-5


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*shape: int, scale: float = 0.5) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return {"word": r(V, D), "pos": r(P, D), "seg": r(2, D), "g0": 1 + r(D, scale=0.2), "b0": r(D, scale=0.2),
            "wqkv": r(D, 3 * H), "bqkv": r(3 * H, scale=0.1), "wo": r(H, D), "g1": 1 + r(D, scale=0.2),
            "b1": r(D, scale=0.2), "bias1": r(D, scale=0.2), "w1": r(D, F), "bf": r(F, scale=0.1), "w2": r(F, D),
            "g2": 1 + r(D, scale=0.2), "g3": 1 + r(D, scale=0.2), "wout": r(D, OUT), "wout2": r(D, OUT)}


def fused_stream_model(stats_output: bool = False) -> onnx.ModelProto:
    """Every fused norm on one stream (see the module docstring); ``stats_output``: the SkipLayerNormalization
    also outputs its mean, read by the graph."""
    w = _weights()
    ms = lambda op, ins, outs, **kw: helper.make_node(op, ins, outs, name=f"{op}_{outs[0]}", domain=MS, **kw)  # noqa: E731
    skip_outs = ["h1", "mean1" if stats_output else "", "", "s1"]
    nodes = [
        ms("EmbedLayerNormalization", ["ids", "segs", "word", "pos", "seg", "g0", "b0"], ["h0", "mask_index", "esum"],
           epsilon=EPS),
        ms("Attention", ["h0", "wqkv", "bqkv"], ["att"], num_heads=HEADS),
        helper.make_node("MatMul", ["att", "wo"], ["a"], name="wo_mm"),
        ms("SkipLayerNormalization", ["a", "esum", "g1", "b1", "bias1"], skip_outs, epsilon=EPS),
        helper.make_node("MatMul", ["h1", "w1"], ["f"], name="w1_mm"),
        ms("FastGelu", ["f", "bf"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["m"], name="w2_mm"),
        ms("SkipSimplifiedLayerNormalization", ["m", "s1", "g2"], ["h2", "", "", "s2"], epsilon=EPS),
        helper.make_node("SimplifiedLayerNormalization", ["s2", "g3"], ["r"], name="rms", axis=-1, epsilon=EPS),
        helper.make_node("MatMul", ["r", "wout"], ["y1"], name="wout_mm"),
        helper.make_node("MatMul", ["h2", "wout2"], ["y2"], name="wout2_mm"),
        helper.make_node("Add", ["y1", "y2"], ["y"], name="y_add"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", OUT])]
    if stats_output:
        outputs.append(helper.make_tensor_value_info("mean1", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "fused_stream",
        [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", "seq"]) for n in ("ids", "segs")],
        outputs, [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    return model


def _ln(x: np.ndarray, g: np.ndarray, b: np.ndarray | float = 0.0) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + EPS) * g + b


def _rms(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + EPS) * g


def reference(w: dict[str, np.ndarray], ids: np.ndarray, segs: np.ndarray) -> np.ndarray:
    """The graph of :func:`fused_stream_model` in numpy, float64, on any stream width."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    esum = w["word"][ids] + w["pos"][np.arange(ids.shape[1])][None] + w["seg"][segs]
    h0 = _ln(esum, w["g0"], w["b0"])
    qkv = h0 @ w["wqkv"] + w["bqkv"]
    b, s = ids.shape
    q, k, v = (t.reshape(b, s, HEADS, H // HEADS).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=-1))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(H // HEADS)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    att = ((p / p.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(b, s, H)
    s1 = att @ w["wo"] + esum + w["bias1"]
    h1 = _ln(s1, w["g1"], w["b1"])
    f = h1 @ w["w1"] + w["bf"]
    g = 0.5 * f * (1 + np.tanh(np.sqrt(2 / np.pi) * (f + 0.044715 * f ** 3)))
    s2 = g @ w["w2"] + s1
    h2 = _rms(s2, w["g2"])
    return _rms(s2, w["g3"]) @ w["wout"] + h2 @ w["wout2"]


#: each weight's stream axis (the others keep their width in width mode)
STREAM_AXES = {"word": 1, "pos": 1, "seg": 1, "g0": 0, "b0": 0, "wqkv": 0, "wo": 1, "g1": 0, "b1": 0, "bias1": 0,
               "w1": 0, "w2": 1, "g2": 0, "g3": 0, "wout": 0, "wout2": 0}


def _feeds(batch: int, seq: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"ids": rng.integers(0, V, (batch, seq)).astype(np.int32),
            "segs": rng.integers(0, 2, (batch, seq)).astype(np.int32)}


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], feeds)[0]


def _by_name(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_reference_is_onnxruntime_semantics() -> None:
    """The oracle itself: numpy equals onnxruntime's fused kernels on the original model."""
    feeds = _feeds(2, 7)
    np.testing.assert_allclose(_run(fused_stream_model(), feeds), reference(_weights(), feeds["ids"], feeds["segs"]),
                               rtol=1e-4, atol=1e-4)


def test_one_stream_through_every_fused_norm() -> None:
    model = fused_stream_model()
    dg = analyze(model, extra_rules=stream_rules(), dims={"batch": 2, "seq": 7})
    (gid,) = stream_group_ids(model, dg)
    group = dg.groups[gid]
    assert group.prunable and group.size == D, group.blockers
    cut = {(c.tensor, c.axis) for c in group.cuts}
    assert cut == set(STREAM_AXES.items())  # every table's columns, every norm parameter, readers and writers
    members = {s.tensor for s in group.members}
    assert {"h0", "esum", "s1", "s2", "h2", "r"} <= members and "mask_index" not in members


def test_width_pruning_slices_every_fused_op_consistently() -> None:
    model = fused_stream_model()
    result = prune_width(model, ratio=0.25, calib=None, refit=False, dims={"batch": 2, "seq": 7})
    w, pruned = _weights(), _by_name(result.model)
    keep = [j for j in range(D) if any(np.array_equal(w["word"][:, j], c) for c in pruned["word"].T)]
    assert len(keep) == D - 4 and pruned["word"].shape == (V, D - 4)
    sliced = {k: np.take(v, keep, axis=STREAM_AXES[k]) if k in STREAM_AXES else v for k, v in w.items()}
    for name, value in sliced.items():
        np.testing.assert_array_equal(pruned[name], value, err_msg=name)
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in model.graph.node]  # still fused
    feeds = _feeds(3, 10)  # another batch and sequence than the analysis ran at
    np.testing.assert_allclose(_run(result.model, feeds), reference(sliced, feeds["ids"], feeds["segs"]),
                               rtol=1e-4, atol=1e-4)
    assert result.report["streams"] == [{"group": result.report["streams"][0]["group"], "width_before": D,
                                         "width_after": D - 4}]


def test_the_fused_attention_is_re_fitted_with_the_other_readers() -> None:
    """Its packed Q/K/V weight reads the stream like a MatMul: the re-fit solves it too, from the pruned
    model's (re-normalized) input to the original projection's output."""
    calib = [_feeds(4, 9, seed=s) for s in range(4)]
    result = prune_width(fused_stream_model(), ratio=0.25, calib=calib, dims={"batch": 2, "seq": 7})
    fitted = {f["layer"]: f for f in result.report["refit"]}
    assert set(fitted) == {"Attention_att", "w1_mm", "wout_mm", "wout2_mm"}
    assert fitted["Attention_att"]["rel_error_after"] < 0.8 * fitted["Attention_att"]["rel_error_before"]
    att = next(n for n in result.model.graph.node if n.op_type == "Attention")
    w, pruned = _weights(), _by_name(result.model)
    assert pruned[att.input[1]].shape == (D - 4, 3 * H) and pruned[att.input[2]].shape == (3 * H,)
    assert not any(np.allclose(pruned[att.input[1]][:, :4], w["wqkv"][j, :4]) for j in range(D))  # solved, not sliced
    assert _run(result.model, _feeds(3, 10)).shape == (3, 10, OUT)


def test_unfusing_skip_layer_norms_is_exact() -> None:
    """The rewrite rotation starts from: every output, the ``input_skip_bias_sum`` included, unchanged."""
    model = fused_stream_model()
    model.graph.output.append(helper.make_tensor_value_info("s1", TensorProto.FLOAT, None))
    unfused = onnx.ModelProto()
    unfused.CopyFrom(model)
    assert unfuse_skip_norms(unfused) == ("SkipLayerNormalization_h1",)
    ops = [n.op_type for n in unfused.graph.node]
    assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 1
    assert "SkipSimplifiedLayerNormalization" in ops  # an RMSNorm stream: left fused (rotation refuses it)
    feeds = _feeds(3, 8)
    want = ort.InferenceSession(model.SerializeToString()).run(["y", "s1"], feeds)
    got = ort.InferenceSession(unfused.SerializeToString()).run(["y", "s1"], feeds)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    stats = fused_stream_model(stats_output=True)
    assert unfuse_skip_norms(stats) == ()  # its mean is read: kept fused


def prenorm_fused_model() -> onnx.ModelProto:
    """A pre-norm stream as onnxruntime's optimizer leaves GPT-2: a plain first LayerNormalization, then
    SkipLayerNormalizations whose sum output carries the stream; the last one's output is the graph's."""
    rng = np.random.default_rng(3)
    w = {k: (rng.standard_normal(s) * 0.5).astype(np.float32) for k, s in
         {"emb": (V, D), "wa": (D, D), "w1": (D, F), "bf": (F,), "w2": (F, D), "bias2": (D,)}.items()}
    w.update({f"{p}{i}": (1 + (p == "g") + rng.standard_normal(D) * 0.2 - 1).astype(np.float32)
              for p in ("g", "b") for i in range(3)})
    ms = lambda op, ins, outs, **kw: helper.make_node(op, ins, outs, name=f"{op}_{outs[0]}", domain=MS, **kw)  # noqa: E731
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["x"], name="embed"),
             helper.make_node("LayerNormalization", ["x", "g0", "b0"], ["n0"], name="ln0", axis=-1, epsilon=EPS),
             helper.make_node("MatMul", ["n0", "wa"], ["a"], name="wa_mm"),
             ms("SkipLayerNormalization", ["a", "x", "g1", "b1"], ["n1", "", "", "s1"], epsilon=EPS),
             helper.make_node("MatMul", ["n1", "w1"], ["f"], name="w1_mm"),
             ms("FastGelu", ["f", "bf"], ["g"]),
             helper.make_node("MatMul", ["g", "w2"], ["m"], name="w2_mm"),
             ms("SkipLayerNormalization", ["m", "s1", "g2", "b2", "bias2"], ["y"], epsilon=EPS)]
    graph = helper.make_graph(nodes, "prenorm_fused",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", "hidden"])],
                              [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    return model


def test_a_pre_norm_fused_stream_is_rotated_exactly_then_sliced(tmp_path: Path) -> None:
    from onnxprune import PruneConfig, prune

    rng = np.random.default_rng(4)
    calib = tmp_path / "calib.npz"
    np.savez(calib, ids=rng.integers(0, V, (8, 6)))
    result = prune(prenorm_fused_model(), PruneConfig(mode="width", ratio=0.25, calib=str(calib), bench=False))
    width = result.report["width"]
    assert width["method"] == "rotate", width.get("why_not_rotated")
    assert width["unfused_norms"] == ["SkipLayerNormalization_n1", "SkipLayerNormalization_y"]
    assert width["rotation_check"]["passed"] and (width["width_before"], width["width_after"]) == (D, D - 4)
    assert not any(n.op_type == "SkipLayerNormalization" for n in result.model.graph.node)
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"ids": rng.integers(0, V, (3, 9))})[0].shape == (3, 9, D)  # output at full width


def test_a_used_statistic_output_blocks_with_its_name() -> None:
    with pytest.raises(UnsupportedModelError, match="outputs its statistic 'mean1'"):
        prune_width(fused_stream_model(stats_output=True), ratio=0.25, calib=None, refit=False,
                    dims={"batch": 2, "seq": 7})


def test_a_stream_output_with_a_symbolic_width_keeps_its_width() -> None:
    """onnxruntime's optimizer declares the last output's width by name ('Reshapeout_dim_2'): the appended
    projection takes the stream's width from its group, and the output keeps all ``D`` channels."""
    model = fused_stream_model()
    model.graph.output.append(helper.make_tensor_value_info("s2", TensorProto.FLOAT, ["batch", "seq", "hidden"]))
    result = prune_width(model, ratio=0.25, calib=None, refit=False, dims={"batch": 2, "seq": 7})
    assert [(p["output"], p["width"]) for p in result.report["outputs_kept_full_width"]] == [("s2", D)]
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(["s2"], _feeds(3, 4))[0].shape == (3, 4, D)


def test_the_default_analysis_still_blocks_the_fused_norms() -> None:
    """Structured mode is exact: the stream stays whole there."""
    dg = analyze(fused_stream_model(), dims={"batch": 2, "seq": 7})
    assert not any(g.prunable and g.size == D for g in dg.groups)
    assert any("normalizes over the residual stream" in b for g in dg.groups for b in g.blockers)


# -- the real fused exports -------------------------------------------------------------------------------------
FOLDER = Path(os.environ.get("ONNXPRUNE_FUSED_EXPORTS", Path.home() / ".cache" / "onnxprune" / "fused-exports"))
NAMES = ["eager_bert_fused", "eager_gpt2_fused", "eager_vit_fused", "hf_llama_gqa_legacy_fused"]
ROTATED = {"eager_gpt2_fused", "eager_vit_fused"}
ROTATION_BLOCKER = {"eager_bert_fused": "EmbedLayerNormalization",
                    "hf_llama_gqa_legacy_fused": "SkipSimplifiedLayerNormalization"}
FUSED = [n for n in NAMES if (FOLDER / f"{n}.onnx").exists() and (FOLDER / f"{n}.inputs.npz").exists()]


def _stretched(feeds: dict[str, np.ndarray], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Batch 3, and 3 more tokens for integer inputs with a dynamic axis 1."""
    dynamic = {i.name: [not d.HasField("dim_value") for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    out = {}
    for name, v in feeds.items():
        v = np.concatenate([v] * 3, axis=0)[:3]
        if len(dynamic[name]) > 1 and dynamic[name][1] and v.dtype.kind in "iu":
            v = np.concatenate([v, v[:, :3]], axis=1)
        out[name] = v
    return out


@pytest.mark.slow  # four width runs through the pipeline, about 20 s alone
@pytest.mark.skipif(not FUSED or bool(os.environ.get("CI") and "ONNXPRUNE_FUSED_EXPORTS" not in os.environ),
                    reason=f"no fused exports in {FOLDER} (tools/fused_exports.py writes them)")
@pytest.mark.parametrize("name", FUSED)
def test_real_fused_export_width(name: str) -> None:
    from onnxprune import PruneConfig, prune
    from onnxprune.core.io import load_model
    from onnxprune.recovery.stream_view import width_view
    from onnxprune.runtime.dims import resolve_dims

    path, npz = FOLDER / f"{name}.onnx", FOLDER / f"{name}.inputs.npz"
    model = load_model(path)
    view = width_view(model, dims=resolve_dims(model, required=False).dims)
    assert view["coverage_without_interface"] >= 0.99, view["uncovered"]
    result = prune(path, PruneConfig(mode="width", ratio=0.25, calib=str(npz), bench=False))
    width = result.report["width"]
    assert result.report["macs_after"] < 0.85 * result.report["macs_before"]
    fused = [n.op_type for n in model.graph.node if n.domain == MS]
    if name in ROTATED:  # pre-norm: SkipLayerNormalization written as the ops it fused, then rotated
        assert width["method"] == "rotate", width.get("why_not_rotated")
        assert width["rotation_check"]["passed"], width["rotation_check"]
        assert width["unfused_norms"] and width["width_after"] < width["width_before"]
        assert sorted(n.op_type for n in result.model.graph.node if n.domain == MS) == \
            sorted(op for op in fused if op != "SkipLayerNormalization")
    else:
        assert width["method"] == "plain" and f"fused {ROTATION_BLOCKER[name]}" in width["why_not_rotated"]
        assert width["rewrite_check"]["passed"], width["rewrite_check"]
        assert width["streams"][0]["width_after"] < width["streams"][0]["width_before"]
        assert sorted(n.op_type for n in result.model.graph.node if n.domain == MS) == sorted(fused)
    with np.load(npz) as data:
        feeds = _stretched({k: data[k] for k in data.files}, model)
    got = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert [g.shape for g in got] == [x.shape for x in want]
