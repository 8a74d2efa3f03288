"""The package's public surface: importable names, and no onnxruntime import at package import."""

from __future__ import annotations

import subprocess
import sys

import onnxprune


def test_all_names_resolve() -> None:
    for name in onnxprune.__all__:
        assert getattr(onnxprune, name) is not None, name


def test_importing_the_package_does_not_import_onnxruntime() -> None:
    code = "import sys, onnxprune; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_prune_api_end_to_end_on_a_model_proto(tmp_path) -> None:
    import builders

    model = builders.conv_bn_relu()
    before = model.SerializeToString()
    out = tmp_path / "pruned.onnx"
    result = onnxprune.prune(model, onnxprune.PruneConfig(ratio=0.5), output=out)
    assert model.SerializeToString() == before  # input never mutated
    assert out.is_file() and result.output == out
    report = result.report
    assert report["macs_after"] < report["macs_before"]
    assert report["params_before"] - report["params_after"] == report["params_removed"]
    assert report["validation"]["exact"]["passed"] is True
