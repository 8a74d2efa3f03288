"""Same input and options → byte-identical output files and identical reports (timings aside).

Checked for every mode (structured with several criteria, unstructured layer/global, N:M, sparse storage,
data-aware pruning with recovery), twice in one process, and for one case in two subprocesses with
different ``PYTHONHASHSEED`` (so no set or dict iteration order can leak into the output).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from builders import residual_add, transformer_ffn

from onnxprune.cli.main import main

#: Report keys that measure time (and so differ between runs by design).
TIMING_KEYS = frozenset({"seconds"})
#: The latency table's cache use: a first run times what a second one reads from the cache, so each count
#: depends on what the cache held; their sum (the layers looked up) does not, and is compared instead.
CACHE_USE_KEYS = ("layers_timed", "layers_cached")

CASES = {
    "structured-l2": ["--ratio", "0.4"],
    "structured-fpgm-global": ["--ratio", "0.4", "--importance", "fpgm", "--global", "--round-to", "2"],
    "structured-random-seeded": ["--ratio", "0.5", "--importance", "random", "--seed", "7"],
    "structured-calib-lstsq": ["--ratio", "0.4", "--importance", "activation", "--recover", "lstsq"],
    "unstructured-layer": ["--mode", "unstructured", "--sparsity", "0.6"],
    "unstructured-global": ["--mode", "unstructured", "--sparsity", "0.6", "--scope", "global"],
    "nm-2:4": ["--mode", "nm", "--nm", "2:4"],
    "sparse-storage": ["--mode", "unstructured", "--sparsity", "0.8", "--sparse-storage"],
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def without_timings(report: Any) -> Any:
    if isinstance(report, dict):
        out = {k: without_timings(v) for k, v in report.items() if k not in TIMING_KEYS}
        if all(k in out for k in CACHE_USE_KEYS):
            out["layers_looked_up"] = sum(out.pop(k) for k in CACHE_USE_KEYS)
        return out
    if isinstance(report, list):
        return [without_timings(v) for v in report]
    return report


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("det")
    path = folder / "model.onnx"
    onnx.save(residual_add(), str(path))
    calib = folder / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((16, 3, 6, 6)).astype(np.float32))
    return path, calib


def _run(source: tuple[Path, Path], out_dir: Path, args: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
    model, calib = source
    out_dir.mkdir()
    extra = ["--calib", str(calib)] if "--recover" in args or "activation" in args else []
    argv = ["prune", str(model), "-o", str(out_dir / "pruned.onnx"), "--report", str(out_dir / "report.json"),
            "--plan-out", str(out_dir / "plan.json"), "-q", *args, *extra]
    if "--mode" in args:
        argv.remove("--plan-out")
        argv.remove(str(out_dir / "plan.json"))
    assert main(argv) == 0
    files = {p.name: sha256(p) for p in sorted(out_dir.iterdir()) if p.name != "report.json"}
    report = json.loads((out_dir / "report.json").read_text())
    return files, report


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_runs_give_identical_bytes_and_reports(source: tuple[Path, Path], tmp_path: Path, case: str) -> None:
    files_a, report_a = _run(source, tmp_path / "a", CASES[case])
    files_b, report_b = _run(source, tmp_path / "b", CASES[case])
    assert "pruned.onnx" in files_a
    assert files_a == files_b
    text_a = json.dumps(without_timings(report_a), sort_keys=True).replace(str(tmp_path / "a"), "<out>")
    text_b = json.dumps(without_timings(report_b), sort_keys=True).replace(str(tmp_path / "b"), "<out>")
    assert text_a == text_b
    assert report_a["params_after"] < report_a["params_before"]
    # The second run planned from the table the first one left in the cache, timing nothing of its own: its
    # identical bytes come from the same cache, not from two timings that happened to agree.
    if report_b.get("latency"):
        assert report_b["latency"]["layers_timed"] == 0


def test_external_data_output_is_deterministic(tmp_path: Path) -> None:
    model = tmp_path / "ffn.onnx"
    onnx.save(transformer_ffn(d=64, hidden=256), str(model))
    digests = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        out = tmp_path / name / "p.onnx"
        assert main(["prune", str(model), "-o", str(out), "--external-data", "--dim", "B=2", "-q"]) == 0
        assert (tmp_path / name / "p.onnx.data").is_file()
        digests.append((sha256(out), sha256(tmp_path / name / "p.onnx.data")))
    assert digests[0] == digests[1]


def test_different_hash_seeds_give_identical_bytes(source: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = source
    digests = {}
    for seed in ("1", "2"):
        out_dir = tmp_path / seed
        out_dir.mkdir()
        env = dict(os.environ, PYTHONHASHSEED=seed)
        argv = [sys.executable, "-m", "onnxprune", "prune", str(model), "-o", str(out_dir / "p.onnx"), "--ratio",
                "0.4", "--importance", "fpgm", "--global", "--plan-out", str(out_dir / "plan.json"), "-q"]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        digests[seed] = (sha256(out_dir / "p.onnx"), sha256(out_dir / "plan.json"))
    assert digests["1"] == digests["2"]
