"""Real exports (Ultralytics, timm, Hugging Face, tf2onnx, paddle2onnx, fp16, int8 QDQ) prune with no extra flag.

``tools/export_real.py`` (its own venv, never needed here) writes small, randomly initialised exports of each
model class users bring into a cache folder, ``~/.cache/onnxprune/real-exports`` (``$ONNXPRUNE_REAL_EXPORTS``
overrides it). This module runs ``onnxprune prune MODEL -o OUT --mode MODE`` with no other flag on whatever
that folder holds, in every mode, each run in its own process, and judges the result with onnx and
onnxruntime directly (``tools/real_exports_table.py`` does the same for the README's table):

* exit 0, or, for a model with Q/DQ nodes only, a refusal: exit 1 with one line ``onnxprune: error: ...``;
* the output passes ``onnx.checker`` (full check);
* onnxruntime runs it on the exporter's example inputs with the original's output shapes;
* the declared input/output signature (names, element types, dims with their symbolic names) is unchanged;
* the precision is unchanged (initializer element types, Q/DQ node count): a model is never de-quantized.

It skips, with the reason, when the folder is missing or empty, so it costs CI nothing. Under CI (``CI`` set)
it also skips unless ``$ONNXPRUNE_REAL_EXPORTS`` names the folder explicitly: CI runs on whatever machine it
is given, and a cache left there by hand must not decide whether a submission lands.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import real_exports_table as real  # noqa: E402

FOLDER = real.export_dir()
MODELS = real.list_models(FOLDER)
if os.environ.get("CI") and not os.environ.get(real.ENV_VAR):
    SKIP = f"under CI the real-export set runs only when ${real.ENV_VAR} names its folder"
elif not MODELS:
    SKIP = (f"no real exports in {FOLDER}: run tools/export_real.py (its own venv, see its docstring) "
            f"or set ${real.ENV_VAR}")
else:
    SKIP = ""
CASES = [pytest.param(m, mode, id=f"{m.stem}-{mode}") for m in MODELS for mode in real.MODES] if not SKIP else [
    pytest.param(None, None, id="no-real-exports", marks=pytest.mark.skip(reason=SKIP))]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "mode"), CASES)
def test_real_export_prunes_with_no_extra_flag(model: Path, mode: str, tmp_path: Path) -> None:
    """One model, one mode: a valid model with the original's shapes, signature and precision, or a QDQ refusal."""
    outcome = real.run_case(model, mode, tmp_path, timeout=600)
    assert outcome.returncode is not None, f"timed out after {outcome.seconds:.0f} s"
    if outcome.returncode != 0 and real.is_qdq(model):
        assert outcome.refused, f"a QDQ model may refuse, but with exit 1 and one line: {outcome.verdict()}"
        return
    assert outcome.returncode == 0, outcome.verdict()
    assert outcome.checker == "ok", outcome.checker
    assert outcome.shapes == "same", outcome.shapes
    assert outcome.io == "same", outcome.io
    assert outcome.prec == "same", outcome.prec


# -- the judge itself: runs everywhere (no cache needed), so a judge that passes everything cannot slip in ----------
def test_judge_passes_a_committed_model(tmp_path: Path) -> None:
    """A model the pruner handles is judged ok, with the coverage and exactness read from the summary."""
    model = tmp_path / "tv_resnet18.onnx"
    model.write_bytes((Path(__file__).resolve().parents[1] / "models" / "tv_resnet18.onnx").read_bytes())
    outcome = real.run_case(model, "structured", tmp_path, timeout=300)
    assert outcome.ok, outcome.verdict()
    assert outcome.coverage is not None and 0 < outcome.coverage <= 100
    assert outcome.exact.startswith("pass ")
    assert outcome.size_ratio is not None and outcome.size_ratio < 1


def test_judge_reports_a_one_line_refusal(tmp_path: Path) -> None:
    """A file that is not a model: exit 1, one line, no output: a refusal, never 'ok'."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    outcome = real.run_case(bad, "unstructured", tmp_path, timeout=300)
    assert outcome.returncode == 1 and outcome.refused and not outcome.ok
    assert outcome.verdict().startswith("exit 1: ") and "bad.onnx" in outcome.verdict()
    assert not list(tmp_path.glob("bad.unstructured.onnx*"))


def _qdq_matmul(*, folded: bool, batch: str | int = "batch") -> onnx.ModelProto:
    """x[batch, 4] @ W: W int8 behind DequantizeLinear, or (folded) the same W already in float."""
    w = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    scale = np.float32(0.5)
    if folded:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [numpy_helper.from_array(w.astype(np.float32) * scale, "w")]
    else:
        nodes = [helper.make_node("DequantizeLinear", ["wq", "s"], ["w"]),
                 helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [numpy_helper.from_array(w, "wq"), numpy_helper.from_array(np.array(scale), "s")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_judge_names_a_pinned_dim_and_a_dequantized_weight(tmp_path: Path) -> None:
    """Declared dims must keep their symbolic names; int8 weights must stay int8 behind their Q/DQ nodes."""
    original, pinned, folded = _qdq_matmul(folded=False), _qdq_matmul(folded=False, batch=1), _qdq_matmul(folded=True)
    assert real.describe_signature_change(real.signature(original), real.signature(original)) == ""
    assert real.describe_signature_change(real.signature(original), real.signature(pinned)) == (
        "output y: declared 1['batch', '4'] became 1['1', '4']")
    assert real.describe_precision_change(real.precision(original), real.precision(original)) == ""
    change = real.describe_precision_change(real.precision(original), real.precision(folded))
    assert change == "Q/DQ nodes 1 -> 0; initializer types FLOAT,INT8 -> FLOAT"
    for name, model in (("orig", original), ("folded", folded)):
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
    outcome = real.Outcome("m", "unstructured", 0, 0.0)
    real.judge_output(tmp_path / "orig.onnx", tmp_path / "folded.onnx", outcome)
    assert (outcome.checker, outcome.shapes, outcome.io) == ("ok", "same", "same")
    assert not outcome.ok and outcome.verdict() == f"FAIL: precision: {change}"
    assert real.output_shapes(tmp_path / "orig.onnx") == {"y": (2, 4)}  # seeded feeds: dynamic batch -> 2
    # a second version of a shared quantized constant (its own DequantizeLinear of an int8 copy) is not a change
    versioned = _qdq_matmul(folded=False)
    versioned.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.int8), "wq2"))
    versioned.graph.node.insert(0, helper.make_node("DequantizeLinear", ["wq2", "s"], ["w2"]))
    assert real.describe_precision_change(real.precision(original), real.precision(versioned)) == ""
    activation = _qdq_matmul(folded=False)  # a Q/DQ pair on an activation added is one
    activation.graph.node.extend([helper.make_node("QuantizeLinear", ["y", "s"], ["yq"]),
                                  helper.make_node("DequantizeLinear", ["yq", "s"], ["yd"])])
    assert real.describe_precision_change(real.precision(original), real.precision(activation)) == "Q/DQ nodes 1 -> 3"
