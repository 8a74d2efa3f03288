"""A BERT after onnxruntime's transformer optimizer (``models/fused/bert_fused.onnx``, made by
``tools/fused_exports.py export --ship``: EmbedLayerNormalization, Attention, SkipLayerNormalization,
BiasGelu) is structurally prunable: its heads and feed-forward neurons, through the CLI, proven exact in
onnxruntime, with its dynamic batch and sequence axes intact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnxprune.cli.main import main
from onnxprune.core.io import load_model
from onnxprune.structured.analysis import analyze
from onnxprune.structured.attention import attention_heads
from onnxprune.structured.prune import coverage

MODEL = Path(__file__).resolve().parents[2] / "models" / "fused" / "bert_fused.onnx"


def _attention_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if (n.domain, n.op_type) == ("com.microsoft", "Attention")]


def test_fused_bert_heads_and_feed_forward_are_prunable() -> None:
    model = load_model(MODEL)
    assert len(_attention_nodes(model)) == 2
    dg = analyze(model)
    heads = [g for g in dg.prunable_groups if any(c.op_type == "Attention" and c.role == "source" for c in g.cuts)]
    ffn = [g for g in dg.prunable_groups if any(c.op_type == "BiasGelu" for c in g.cuts)]
    assert [g.size for g in heads] == [4, 4] and [g.size for g in ffn] == [128, 128], dg.summary()
    assert [attention_heads(g) for g in heads] == [{"heads": 4, "head_channels": 16}] * 2  # what analyze shows
    # every weighted layer's non-stream side: the residual stream is blocked by the SkipLayerNormalizations
    assert coverage(model, dg, dict(dg.shapes)) == 0.5
    assert any("normalizes over the residual stream" in b for g in dg.groups for b in g.blockers)


def test_fused_bert_prunes_at_0_3_through_the_cli_exactly(tmp_path: Path) -> None:
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    assert main(["prune", str(MODEL), "-o", str(out), "--ratio", "0.3", "--round-to", "1", "--no-bench",
                 "--report", str(report), "--quiet"]) == 0
    result = json.loads(report.read_text())
    assert result["validation"]["exact"]["passed"]
    assert result["macs_after"] < result["macs_before"]
    pruned = onnx.load(str(out))
    for node in _attention_nodes(pruned):
        assert next(helper.get_attribute_value(a) for a in node.attribute if a.name == "num_heads") == 3
        weight = next(t for t in pruned.graph.initializer if t.name == node.input[1])
        assert list(weight.dims) == [64, 3 * 48]
    original = load_model(MODEL)
    assert [str(i.type) for i in pruned.graph.input] == [str(i.type) for i in original.graph.input]
    assert [str(o.type) for o in pruned.graph.output] == [str(o.type) for o in original.graph.output]
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 1000, (3, 11)), "attention_mask": np.ones((3, 11), np.int64),
             "token_type_ids": np.zeros((3, 11), np.int64)}
    shapes = [o.shape for o in ort.InferenceSession(str(out)).run(None, feeds)]
    assert shapes == [(3, 11, 64)]  # other batch and sequence sizes than the prune ran at
