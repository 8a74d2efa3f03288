"""One spelling per idea across subcommands, help that shows every default, and the CLI's helpers
(issue 12, items 16 and 17): old spellings work for one version with a deprecation warning; ``--dry-run``
writes nothing; files of other frameworks get a hint to export to ONNX; install hints match the README.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import class_scores, conv_bn_relu, mlp, mlp3

from onnxprune.cli.main import build_parser, main
from onnxprune.config import PruneConfig

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DEPRECATED = "onnxprune: WARNING: {old} is deprecated and will be removed in the next version; use {new}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# -- item 16: one spelling per idea ---------------------------------------------------------------------
def test_scope_global_and_old_global_give_the_same_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "mlp3.onnx"
    onnx.save(mlp3(), str(source))  # two groups of different weight scales: global ranking differs
    plans = {}
    for name, flags in (("new", ["--scope", "global"]), ("old", ["--global"]), ("layer", [])):
        plan = tmp_path / f"{name}.json"
        capsys.readouterr()
        assert main(["prune", str(source), "-o", str(tmp_path / f"{name}.onnx"), "--ratio", "0.5",
                     "--importance", "l1", "--plan-out", str(plan), "--no-validate", "--round-to", "1", *flags]) == 0
        err = capsys.readouterr().err
        assert ("deprecated" in err) == (name == "old"), err
        plans[name] = json.loads(plan.read_text())
    assert plans["new"] == plans["old"]
    assert plans["new"]["meta"]["global_rank"] and not plans["layer"]["meta"]["global_rank"]
    assert plans["new"]["groups"] != plans["layer"]["groups"]


def test_old_global_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "cnn.onnx"
    onnx.save(conv_bn_relu(), str(source))
    assert main(["prune", str(source), "-o", str(tmp_path / "o.onnx"), "--global", "--no-validate"]) == 0
    assert DEPRECATED.format(old="--global", new="--scope global") in capsys.readouterr().err


def test_eval_spellings(capsys: pytest.CaptureFixture[str]) -> None:
    model, data = str(MODELS / "digits_cnn.onnx"), str(MODELS / "digits_cnn_test.npz")
    results = {}
    for name, argv in (("new", ["--eval-data", data, "--batch-size", "90", "--output-name", "logits"]),
                       ("old", ["--data", data, "--batch", "90", "--output", "logits"])):
        assert main(["eval", model, *argv, "--json"]) == 0
        captured = capsys.readouterr()
        results[name] = json.loads(captured.out)
        for old, new in (("--data", "--eval-data"), ("--batch", "--batch-size"), ("--output", "--output-name")):
            assert (DEPRECATED.format(old=old, new=new) in captured.err) == (name == "old"), captured.err
    assert results["new"] == results["old"]
    assert main(["eval", model]) == 1
    assert "eval needs labelled data: --eval-data" in capsys.readouterr().err


def test_validate_batch_size_spellings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(mlp(), str(model))
    for argv, warned in ((["--batch-size", "4"], False), (["--batch", "4"], True)):
        assert main(["validate", str(model), str(model), "--samples", "8", "--json", *argv]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["samples"] == 8
        assert (DEPRECATED.format(old="--batch", new="--batch-size") in captured.err) == warned


def test_bench_batches_spellings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(mlp(), str(model))
    for argv, warned in ((["--batches", "1,3"], False), (["--batch", "1,3"], True)):
        assert main(["bench", str(model), "--runs", "1", "--warmup", "0", "--json", *argv]) == 0
        captured = capsys.readouterr()
        assert sorted({c["batch"] for c in json.loads(captured.out)["cases"]}) == [1, 3]
        assert (DEPRECATED.format(old="--batch", new="--batches") in captured.err) == warned


def test_prune_bench_batches_spellings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(mlp(), str(source))
    for name, argv in (("new", ["--batches", "2"]), ("old", ["--batch", "2"])):
        report = tmp_path / f"{name}.json"
        assert main(["prune", str(source), "-o", str(tmp_path / f"{name}.onnx"), "--bench", "--runs", "1",
                     "--warmup", "0", "--report", str(report), "-q", *argv]) == 0
        assert {c["batch"] for c in json.loads(report.read_text())["bench"]["cases"]} == {2}
        # -q keeps deprecation warnings quiet like every other warning
        capsys.readouterr()


def test_prune_bench_and_bench_share_their_defaults() -> None:
    commands = _subparsers(build_parser())
    defaults = {name: {a.dest: a.default for a in commands[name]._actions} for name in ("prune", "bench")}
    config = PruneConfig()
    assert defaults["bench"]["runs"] == config.bench_runs == 50
    assert defaults["bench"]["warmup"] == config.bench_warmup == 5
    prune_help = commands["prune"].format_help()
    assert "timed runs (default 50)" in prune_help and "untimed runs (default 5)" in prune_help


# -- item 17: help, dry run, hints ------------------------------------------------------------------------
def test_every_option_of_every_command_has_help() -> None:
    missing = []
    for name, parser in _subparsers(build_parser()).items():
        for action in parser._actions:
            if not action.help or not action.help.strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help: {missing}"


def test_prune_help_shows_every_default() -> None:
    text = re.sub(r"\s+", " ", _subparsers(build_parser())["prune"].format_help())
    for expected in ("(default structured)", "(default 0.3)", "(default l2)", "(default layer)",
                     "leave weights with fewer elements alone (default 0)", "(default 0.5)", "(default 2:4)",
                     "absolute tolerance of the exactness check (default 0.0001)",
                     "max|original|, of the exactness check (default 0.0001)", "(default 50)", "(default 5)",
                     "(default 1,8)",
                     "(default cpu)", "(default labels)", "(default: bias with --calib, else none)"):
        assert expected in text, expected


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "cnn.onnx"
    onnx.save(conv_bn_relu(c_mid=16), str(source))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["prune", str(source), "-o", str(out_dir / "p.onnx"), "--ratio", "0.5", "--dry-run",
                 "--plan-out", str(out_dir / "plan.json")]) == 0
    text = capsys.readouterr().out
    assert list(out_dir.iterdir()) == []
    assert "nothing was written" in text and "channels kept" in text
    assert re.search(r"\b8/16\b", text), text  # 16 channels, half kept
    assert main(["prune", str(source), "-o", str(out_dir / "p.onnx"), "--ratio", "0.5", "--report",
                 str(out_dir / "r.json"), "-q"]) == 0
    report = json.loads((out_dir / "r.json").read_text())
    assert f"{report['params_before']:,} -> {report['params_after']:,}" in text
    assert f"{report['macs_before']:,} -> {report['macs_after']:,}" in text


def test_dry_run_refuses_outputs_it_would_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(mlp(), str(source))
    assert main(["prune", str(source), "-o", str(tmp_path / "p.onnx"), "--dry-run", "--report",
                 str(tmp_path / "r.json")]) == 1
    assert "--report does not apply with --dry-run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_dry_run_of_unstructured_lists_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(mlp(), str(source))
    assert main(["prune", str(source), "-o", str(tmp_path / "p.onnx"), "--sparsity", "0.75", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "--mode unstructured" in text and "0.7500" in text
    assert not (tmp_path / "p.onnx").exists()


@pytest.mark.parametrize("name", ["model.pt", "model.pth", "model.h5", "model.keras", "model.pb", "model.tflite",
                                  "model.ckpt", "saved_model_dir"])
def test_other_frameworks_get_an_export_hint(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / name
    if name.endswith("_dir"):
        path.mkdir()
        (path / "saved_model.pb").write_bytes(b"\x08\x01")
    else:
        path.write_bytes(np.random.default_rng(0).bytes(256))
    assert main(["analyze", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not ONNX: export it to ONNX first" in err, err


def test_an_onnx_model_named_pb_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "model.pb"
    onnx.save(mlp(), str(path))
    assert main(["analyze", str(path), "-q"]) == 0


def test_install_hints_match_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[plot]"' in readme or "pip install -e .[plot]" in readme
    for path in (ROOT / "onnxprune").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"pip install onnxprune\[|install onnxprune\[", text), path


def test_deprecation_goes_to_stderr_in_a_subprocess(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(class_scores(), str(model))
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, scores=rng.standard_normal((8, 6)).astype(np.float32), labels=rng.integers(0, 6, 8))
    proc = subprocess.run([sys.executable, "-m", "onnxprune", "eval", str(model), "--data", str(data), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 8
    assert proc.stderr.strip() == DEPRECATED.format(old="--data", new="--eval-data")


def test_readme_cli_section_uses_flags_that_exist() -> None:
    """Every flag the README's CLI section names is one the parser knows; old spellings only as such."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Command line"):text.index("## Python API")]
    known, old = set(), set()
    for parser in _subparsers(build_parser()).values():
        for action in parser._actions:
            (old if action.help == argparse.SUPPRESS else known).update(action.option_strings)
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", section))
    assert named <= known | old, named - known - old
    sentence = section[section.index("The old spellings"):section.index("Options do what they say")]
    for flag in old:
        assert flag in sentence, f"{flag} is an old spelling the README does not list as one"
