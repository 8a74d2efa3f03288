"""Model metadata that downstream pipelines read survives load/save and every prune mode."""

from __future__ import annotations

from pathlib import Path

import builders
import onnx
import pytest
from onnx import helper

from onnxprune import PruneConfig, load_model, prune, save_model


def with_metadata() -> onnx.ModelProto:
    model = builders.conv_bn_relu(seed=5, c_mid=16)
    model.producer_name = "exporter-x"
    model.producer_version = "9.8.7"
    model.domain = "com.example"
    model.model_version = 42
    model.doc_string = "a model with metadata"
    model.graph.doc_string = "graph doc"
    helper.set_model_props(model, {"labels": "cat,dog", "author": "someone"})
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    model.graph.node[0].doc_string = "first conv"
    return model


def metadata(model: onnx.ModelProto) -> dict:
    return {
        "ir_version": model.ir_version,
        "opset": sorted((o.domain, o.version) for o in model.opset_import),
        "producer": (model.producer_name, model.producer_version),
        "domain": model.domain,
        "model_version": model.model_version,
        "doc": (model.doc_string, model.graph.doc_string),
        "props": {p.key: p.value for p in model.metadata_props},
        "graph_name": model.graph.name,
        "node_names": [n.name for n in model.graph.node],
        "node_docs": [n.doc_string for n in model.graph.node],
        "inputs": [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}],
        "outputs": [o.name for o in model.graph.output],
    }


@pytest.mark.parametrize("external", [False, True])
def test_save_load_round_trip_keeps_metadata(tmp_path: Path, external: bool) -> None:
    model = with_metadata()
    path = save_model(model, tmp_path / "m.onnx", external_data=external)
    assert metadata(load_model(path)) == metadata(model)
    assert metadata(onnx.load(str(path))) == metadata(model)  # plain onnx reads it too


@pytest.mark.parametrize(
    "config",
    [
        PruneConfig(ratio=0.5),
        PruneConfig(mode="unstructured", sparsity=0.8),
        PruneConfig(mode="unstructured", sparsity=0.9, sparse_storage=True),
        PruneConfig(mode="nm", nm="2:4"),
    ],
    ids=["structured", "unstructured", "sparse-storage", "nm"],
)
def test_every_prune_mode_keeps_metadata(tmp_path: Path, config: PruneConfig) -> None:
    model = with_metadata()
    out = tmp_path / "out.onnx"
    prune(model, config, output=out)
    assert metadata(onnx.load(str(out))) == metadata(model)
