"""Width mode keeps a tied LM head tied: one stored table, a smaller model, exact rewrites before the cut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli.main import main
from onnxprune.core.stats import model_stats
from onnxprune.recovery.slicegpt import prune_stream_width
from onnxprune.runtime.session import create_session, run_session

VOCAB, WIDTH = 1024, 16  # a table of 64 KB: the pipeline's constant fold leaves its Transpose at run time


def tied_lm(seed: int = 0, *, stored: bool = False) -> onnx.ModelProto:
    """``ids -> Gather(E) -> x + fc2(relu(fc1(LN(x)))) -> LN_f -> MatMul(., Transpose(E))``: a pre-norm LM whose
    head reads the embedding table transposed at run time (GPT-2 as the dynamo exporter writes it). The norms'
    scales are not 1, so a folded scale changes the head on its own. ``stored``: the head's weight is a second
    initializer equal to ``Eᵀ`` instead (torch's legacy exporter writes GPT-2 so)."""
    rng = np.random.default_rng(seed)
    w = {"E": rng.standard_normal((VOCAB, WIDTH)), "g1": rng.uniform(0.5, 1.5, WIDTH),
         "b1": 0.1 * rng.standard_normal(WIDTH), "W1": rng.standard_normal((WIDTH, 32)) / 4,
         "c1": 0.1 * rng.standard_normal(32), "W2": rng.standard_normal((32, WIDTH)) / 6,
         "gf": rng.uniform(0.5, 1.5, WIDTH), "bf": 0.1 * rng.standard_normal(WIDTH)}
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["h0"], name="embed"),
        helper.make_node("LayerNormalization", ["h0", "g1", "b1"], ["a"], axis=-1, name="ln1"),
        helper.make_node("MatMul", ["a", "W1"], ["u"], name="fc1"),
        helper.make_node("Add", ["u", "c1"], ["ub"], name="fc1_bias"),
        helper.make_node("Relu", ["ub"], ["r"], name="act"),
        helper.make_node("MatMul", ["r", "W2"], ["f"], name="fc2"),
        helper.make_node("Add", ["h0", "f"], ["h1"], name="residual"),
        helper.make_node("LayerNormalization", ["h1", "gf", "bf"], ["z"], axis=-1, name="ln_f"),
        helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0], name="tied_t"),
        helper.make_node("MatMul", ["z", "Et"], ["logits"], name="lm_head"),
    ]
    if stored:
        nodes = [n for n in nodes if n.name != "tied_t"]
        w["Et"] = w["E"].T
    graph = helper.make_graph(
        nodes, "tied_lm", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "T", VOCAB])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ids(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (n, 8)).astype(np.int64)


CALIB = [{"ids": _ids(1 + i, 4)} for i in range(8)]
FEEDS = {"ids": _ids(99, 3)}


def _logits(model: onnx.ModelProto) -> np.ndarray:
    return run_session(create_session(model), FEEDS)["logits"]


def _tables(model: onnx.ModelProto) -> list[str]:
    """Initializers holding a vocab x something table (either orientation): one when tied, two when not."""
    return [t.name for t in model.graph.initializer if len(t.dims) == 2 and VOCAB in t.dims and min(t.dims) > 1]


def test_rotation_keeps_one_table_and_the_tied_rewrite_is_exact() -> None:
    """Rotation folds ln_f's scale into the head and centres the table: the head no longer equals the table's
    transpose, yet one table is stored (plus a column and a k x (k+1) adapter), the model shrinks, and the
    rotated model before slicing, tied the same way, equals the input. Before: the head kept its own
    transposed copy (two tables, 2004 parameters for the input's 1888)."""
    model = tied_lm()
    pruned, exact, report = prune_stream_width(model, ratio=0.25, calib=CALIB)
    assert report["method"] == "rotate"
    assert _tables(pruned) == ["E"] and _tables(exact) == ["E"]
    (tied,) = report["tied_heads"]
    assert tied["head"] == "lm_head" and tied["adapter"] and report["untied"] == []
    assert tied["adapter_params"] == 12 * 13 + VOCAB  # k x (k+1) adapter and the table's extra column
    assert model_stats(pruned).params < model_stats(model).params
    assert len(pruned.SerializeToString()) < len(model.SerializeToString())
    ref = _logits(model)
    np.testing.assert_allclose(_logits(exact), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    assert _logits(pruned).shape == ref.shape


def test_plain_cut_ties_back_without_adapter_and_equals_the_untied_cut() -> None:
    """A plain cut slices the table's columns and the head's rows alike: the head reads ``Transpose(E)``
    again with no adapter, and its logits equal the untied model's (the path proven before). With the
    re-fit, the head is left out of it (said in the report) so it stays the table's transpose."""
    model = tied_lm()
    tied, _, report = prune_stream_width(model, ratio=0.25, calib=CALIB, importance="l2", refit=False)
    untied, _, untied_report = prune_stream_width(model, ratio=0.25, calib=CALIB, importance="l2", refit=False,
                                                  untie=True)
    assert report["method"] == "plain" and report["tied_heads"][0]["adapter"] is None
    assert _tables(tied) == ["E"] and len(_tables(untied)) == 2 and untied_report["untie_notes"]
    head = next(n for n in tied.graph.node if n.name == "lm_head")
    producer = next(n for n in tied.graph.node if head.input[1] in n.output)
    assert producer.op_type == "Transpose" and list(producer.input) == ["E"]
    np.testing.assert_allclose(_logits(tied), _logits(untied), atol=1e-6, rtol=0)
    assert model_stats(tied).params == model_stats(untied).params - 12 * VOCAB

    refitted, _, report = prune_stream_width(model, ratio=0.25, calib=CALIB, importance="l2")
    assert [s["node"] for s in report["refit_skipped"]] == ["lm_head"]
    assert report["tied_heads"][0]["adapter"] is None and _tables(refitted) == ["E"]
    assert report["refit"] and not any("lm_head" in str(r["layer"]) for r in report["refit"])


def test_a_head_stored_as_the_tables_transpose_is_tied_once() -> None:
    """A head whose weight is a second stored copy of ``Eᵀ`` (the legacy export) is found and tied like a
    run-time transpose: the pruned model stores one table, so it drops the whole copy besides the cut, and the
    tied rotated model is exact. Before, the copy was cut and kept."""
    model = tied_lm(stored=True)
    assert len(_tables(model)) == 2
    pruned, exact, report = prune_stream_width(model, ratio=0.25, calib=CALIB)
    assert report["untied"] == [] and [t["head"] for t in report["tied_heads"]] == ["lm_head"]
    assert _tables(pruned) == ["E"] and _tables(exact) == ["E"]
    assert model_stats(pruned).params < model_stats(model).params - VOCAB * WIDTH
    ref = _logits(model)
    np.testing.assert_allclose(_logits(exact), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


@pytest.mark.parametrize("untie", [False, True])
def test_cli_width_file_shrinks_unless_untie_embeddings(untie: bool, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """From the command line: the pruned file is smaller than the input and holds one table; with
    ``--untie-embeddings`` the head keeps its own weight and the console says the table is stored twice."""
    src, out, calib = tmp_path / "lm.onnx", tmp_path / "out.onnx", tmp_path / "calib.npz"
    onnx.save(tied_lm(), src)
    np.savez(calib, ids=_ids(5, 32))
    argv = ["prune", str(src), "-o", str(out), "--mode", "width", "--ratio", "0.25", "--calib", str(calib)]
    assert main(argv + (["--untie-embeddings"] if untie else [])) == 0
    pruned = onnx.load(out)
    err = capsys.readouterr().err
    if untie:
        assert len(_tables(pruned)) == 2 and "stored twice" in err
    else:
        assert _tables(pruned) == ["E"] and "stored twice" not in err
        assert out.stat().st_size < src.stat().st_size
        assert model_stats(pruned).params < model_stats(tied_lm()).params
