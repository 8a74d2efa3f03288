"""``tools/bench_cuda.py`` (the CUDA tables) runs end to end on the CPU provider: one model in float32 and in
float16 (onnxruntime's converter, whose output is out of topological order), tables written after each model,
and a model that fails is reported without stopping the others."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    pytest.importorskip("onnxruntime.transformers.float16")
    sys.path.insert(0, str(ROOT))
    from tools.bench_cuda import main

    out = tmp_path_factory.mktemp("cuda-table")
    assert main(["--out", str(out), "--provider", "cpu", "--models", "digits_cnn,no_such_model",
                 "--fp16", "digits_cnn", "--ratios", "0.3", "--batches", "1,2", "--runs", "3",
                 "--latency-budget", "0.2"]) == 0
    return json.loads((out / "cuda_table.json").read_text()), (out / "cuda_table.md").read_text()


def test_every_variant_and_batch_has_a_speedup_an_ideal_and_a_prediction(table):
    data, _ = table
    rows = {(r["model"], r["batch"]): r for r in data["rows"]}
    assert set(rows) == {("digits_cnn", 1), ("digits_cnn", 2), ("digits_cnn-fp16", 1), ("digits_cnn-fp16", 2)}
    for r in rows.values():
        for label in ("auto", "none", "r8"):
            assert r[f"{label}_speedup"] > 0 and r[f"{label}_ideal"] > 1
            assert r[f"{label}_of_ideal"] == pytest.approx(r[f"{label}_speedup"] / r[f"{label}_ideal"])
        assert r["ideal"] == r["auto_ideal"] and r["predicted"] > 0
        assert "graph_original_ms" not in r, "CUDA graphs are timed on CUDA only"


def test_a_failing_model_is_reported_and_the_others_still_run(table):
    data, text = table
    assert [f["model"] for f in data["failures"]] == ["no_such_model"]
    assert "no_such_model: not measured:" in text and "| digits_cnn-fp16 | auto | 0.3 | 2 |" in text
