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

import pytest

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
