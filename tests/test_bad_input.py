"""Bad input gives a clear error and loses nothing.

Every case runs twice: through the CLI (``main([...])``: exit 1, exactly one stderr line starting
``onnxprune: error:``, no traceback) and through the Python API (a typed ``OnnxPruneError``). Each also
checks that no output file and no temporary file was left in the output folder, and that the input's
bytes did not change.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import conv_bn_relu, mlp

from onnxprune.cli.main import main
from onnxprune.config import PruneConfig
from onnxprune.errors import ConfigError, ModelLoadError, OnnxPruneError, OutputError, UnsupportedModelError
from onnxprune.io import save_model
from onnxprune.pipeline import prune


def digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def folder_state(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@dataclass
class Failure:
    """What a failed run left: its one error line (CLI) and whether the folders are as they were."""

    line: str


def assert_cli_fails(argv: list[str], capsys: pytest.CaptureFixture[str], *, inputs: list[Path],
                     out_dir: Path, match: str) -> Failure:
    """Run the CLI and check every promise a failure makes."""
    before_hash, before_dir = digest(inputs), folder_state(out_dir)
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 1, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("onnxprune: error: ")
    assert "Traceback" not in captured.err
    assert re.search(match, lines[0]), lines[0]
    assert digest(inputs) == before_hash, "the input changed"
    assert folder_state(out_dir) == before_dir, "the output folder changed"
    return Failure(lines[0])


def assert_api_fails(source: Path, config: PruneConfig, output: Path, *, inputs: list[Path],
                     error: type[OnnxPruneError], match: str, out_dir: Path | None = None) -> None:
    out_dir = out_dir or output.parent
    before_hash, before_dir = digest(inputs), folder_state(out_dir)
    with pytest.raises(error, match=match):
        prune(source, config, output=output)
    assert digest(inputs) == before_hash
    assert folder_state(out_dir) == before_dir


# -- broken model files --------------------------------------------------------------------------------
def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _with(model: onnx.ModelProto, edit: Callable[[onnx.ModelProto], None]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    edit(copy)
    return copy


def _external(tmp: Path, damage: Callable[[Path], None]) -> Path:
    path = tmp / "ext.onnx"
    save_model(mlp(), path, external_data=True)
    damage(tmp / "ext.onnx.data")
    return path


def _truncate_half(data: Path) -> None:
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def _not_topological(m: onnx.ModelProto) -> None:
    m.graph.node[0].input[0] = "no_such_tensor"


def _old_opset(m: onnx.ModelProto) -> None:
    m.opset_import[0].version = 6


def _new_opset(m: onnx.ModelProto) -> None:
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 1


SERIALIZED = conv_bn_relu().SerializeToString()

FILE_CASES: dict[str, tuple[Callable[[Path], Path], type[OnnxPruneError], str]] = {
    "missing file": (lambda t: t / "nope.onnx", ModelLoadError, r"nope\.onnx: no such file; check the path"),
    "directory": (lambda t: t, ModelLoadError, "is a directory, not an ONNX file; pass the .onnx file inside"),
    "empty file": (lambda t: _write(t / "e.onnx", b""), ModelLoadError, "file is empty; re-export the model"),
    "random bytes": (lambda t: _write(t / "r.onnx", np.random.default_rng(0).bytes(4096)), ModelLoadError,
                     "not a readable ONNX model .*re-export it"),
    "truncated model": (lambda t: _write(t / "t.onnx", SERIALIZED[: len(SERIALIZED) * 2 // 3]), ModelLoadError,
                        "not a readable ONNX model .*may be truncated"),
    "tensor proto": (lambda t: _write(t / "w.onnx", conv_bn_relu().graph.initializer[0].SerializeToString()),
                     ModelLoadError, "not a readable ONNX model|not an ONNX model"),
    "graph proto": (lambda t: _write(t / "g.onnx", conv_bn_relu().graph.SerializeToString()), ModelLoadError,
                    r"parses as protobuf but is not an ONNX model \(no graph or ir_version\)"),
    "fails checker": (lambda t: _write(t / "c.onnx", _with(conv_bn_relu(), _not_topological).SerializeToString()),
                      ModelLoadError, r"fails onnx\.checker .*no_such_tensor.*fix the exporter output"),
    "missing external data": (lambda t: _external(t, Path.unlink), ModelLoadError,
                              r"external data file 'ext\.onnx\.data' .* is missing; keep the data file next to"),
    "truncated external data": (lambda t: _external(t, _truncate_half), ModelLoadError,
                                r"external data file 'ext\.onnx\.data' is truncated .*copy it again"),
    "opset too old": (lambda t: _write(t / "o.onnx", _with(conv_bn_relu(), _old_opset).SerializeToString()),
                      UnsupportedModelError, "opset 6, older than the oldest supported .*convert_version"),
    "opset too new": (lambda t: _write(t / "n.onnx", _with(conv_bn_relu(), _new_opset).SerializeToString()),
                      UnsupportedModelError, r"newer than the installed onnx supports .*upgrade onnx"),
}


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    return src, out


def _all_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []


@pytest.mark.parametrize("case", sorted(FILE_CASES))
@pytest.mark.parametrize("command", ["prune", "analyze"])
def test_bad_model_file_cli(case: str, command: str, dirs: tuple[Path, Path],
                            capsys: pytest.CaptureFixture[str]) -> None:
    src_dir, out_dir = dirs
    make, _, match = FILE_CASES[case]
    source = make(src_dir)
    argv = [command, str(source)] + (["-o", str(out_dir / "pruned.onnx")] if command == "prune" else [])
    assert_cli_fails(argv, capsys, inputs=_all_files(src_dir), out_dir=out_dir, match=match)


@pytest.mark.parametrize("case", sorted(FILE_CASES))
@pytest.mark.parametrize("mode", ["structured", "unstructured"])
def test_bad_model_file_api(case: str, mode: str, dirs: tuple[Path, Path]) -> None:
    src_dir, out_dir = dirs
    make, error, match = FILE_CASES[case]
    assert_api_fails(make(src_dir), PruneConfig(mode=mode), out_dir / "pruned.onnx", inputs=_all_files(src_dir),
                     error=error, match=match)


def test_every_truncation_point_is_a_clean_error(tmp_path: Path) -> None:
    """Cut the file at each byte: a typed error every time, never a crash or a silently shorter model."""
    from onnxprune.io import load_model

    path = tmp_path / "t.onnx"
    small = mlp(d_in=2, hidden=3, d_out=2).SerializeToString()
    for cut in range(1, len(small)):
        path.write_bytes(small[:cut])
        with pytest.raises(ModelLoadError):
            load_model(path)


def test_verbose_shows_the_traceback(dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    src_dir, out_dir = dirs
    source = _write(src_dir / "r.onnx", b"\x00garbage")
    assert main(["prune", str(source), "-o", str(out_dir / "p.onnx"), "--verbose"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("onnxprune: error: ")
    assert folder_state(out_dir) == []


# -- options out of range ------------------------------------------------------------------------------
OPTION_CASES = [
    (["--sparsity", "1.5"], r"--sparsity must be in \[0, 1\), got 1\.5"),
    (["--sparsity", "1"], r"--sparsity must be in \[0, 1\)"),
    (["--sparsity", "-0.1"], r"--sparsity must be in \[0, 1\)"),
    (["--sparsity", "nan"], r"--sparsity must be in \[0, 1\), got nan"),
    (["--ratio", "1"], r"--ratio must be in \[0, 1\)"),
    (["--ratio", "-0.2"], r"--ratio must be in \[0, 1\)"),
    (["--ratio", "inf"], r"--ratio must be in \[0, 1\), got inf"),
    (["--layer-sparsity", "fc*=2"], r"--layer-sparsity 'fc\*' must be in \[0, 1\)"),
    (["--layer-sparsity", "fc*"], r"--layer-sparsity 'fc\*' is not of the form"),
    (["--mode", "nm", "--nm", "4:2"], r"N:M pattern needs 0 < n < m .*got 4:2; try 2:4"),
    (["--mode", "nm", "--nm", "0:4"], r"N:M pattern needs 0 < n < m .*got 0:4"),
    (["--mode", "nm", "--nm", "two:four"], r"N:M pattern 'two:four' must be two integers"),
    (["--round-to", "0"], r"--round-to must be >= 1, got 0"),
    (["--min-channels", "0"], r"--min-channels must be >= 1, got 0"),
    (["--min-size", "-1"], r"--min-size must be >= 0, got -1"),
    (["--batch", "0"], r"--(bench-)?batch must be >= 1, got 0"),
    (["--bench", "--batch", "1,-2"], r"--(bench-)?batch must be >= 1, got -2"),
    (["--runs", "0"], r"--runs must be >= 1"),
    (["--warmup", "-1"], r"--warmup >= 0"),
    (["--threads", "0"], r"--threads must be >= 1, got 0"),
    (["--target-macs", "0"], r"--target-macs must be in \(0, 1\], got 0\.0"),
    (["--target-macs", "1.5"], r"--target-macs must be in \(0, 1\]"),
    (["--target-params", "-0.5"], r"--target-params must be in \(0, 1\]"),
    (["--mode", "unstructured", "--target-macs", "0.5"], r"apply to --mode structured only"),
    (["--max-error", "0"], r"--max-error must be > 0"),
    (["--atol", "-1"], r"--atol and --rtol must be >= 0"),
    (["--rtol", "nan"], r"--atol and --rtol must be >= 0"),
    (["--dim", "N=0"], r"--dim N=0: .*positive integer"),
    (["--dim", "N"], r"--dim 'N' is not of the form NAME=VALUE \(e\.g\. --dim 'batch=8'\)"),
    (["--dim", "N=x"], r"--dim 'N=x': 'x' is not a valid int"),
    (["--exclude", ""], r"--exclude needs a non-empty pattern"),
    (["--recover", "lstsq"], r"--recover lstsq needs calibration data; pass --calib"),
]


@pytest.mark.parametrize(("args", "match"), OPTION_CASES, ids=[" ".join(a) for a, _ in OPTION_CASES])
def test_option_out_of_range_cli(args: list[str], match: str, dirs: tuple[Path, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    src_dir, out_dir = dirs
    source = src_dir / "mlp.onnx"
    onnx.save(mlp(), str(source))
    assert_cli_fails(["prune", str(source), "-o", str(out_dir / "p.onnx"), *args], capsys, inputs=[source],
                     out_dir=out_dir, match=match)


CONFIG_CASES = [
    (dict(sparsity=1.0), r"--sparsity must be in \[0, 1\)"),
    (dict(ratio=-0.1), r"--ratio must be in \[0, 1\)"),
    (dict(mode="nm", nm="3:3"), r"N:M pattern needs 0 < n < m .*got 3:3"),
    (dict(round_to=0), r"--round-to must be >= 1"),
    (dict(min_channels=0), r"--min-channels must be >= 1"),
    (dict(bench_batches=(0,)), r"--(bench-)?batch must be >= 1"),
    (dict(bench_runs=0), r"--runs must be >= 1"),
    (dict(target_macs=2.0), r"--target-macs must be in \(0, 1\]"),
    (dict(dims={"N": 0}), r"--dim N=0: .*(positive integer|must be >= 1)"),
    (dict(mode="sideways"), r"--mode must be one of"),
]


@pytest.mark.parametrize(("changes", "match"), CONFIG_CASES, ids=[str(c) for c, _ in CONFIG_CASES])
def test_option_out_of_range_api(changes: dict[str, object], match: str, dirs: tuple[Path, Path]) -> None:
    src_dir, out_dir = dirs
    source = src_dir / "mlp.onnx"
    onnx.save(mlp(), str(source))
    config = PruneConfig(**changes)  # type: ignore[arg-type]
    assert_api_fails(source, config, out_dir / "p.onnx", inputs=[source], error=ConfigError, match=match)
    with pytest.raises(ValueError, match=match):  # ConfigError is also a ValueError
        config.validate_options()


# -- output paths --------------------------------------------------------------------------------------
def _unwritable(tmp: Path) -> Path:
    if os.geteuid() == 0:  # root writes through chmod; /proc/self is a folder nobody can create files in
        return Path("/proc/self")
    folder = tmp / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


OUTPUT_CASES: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "output is the input": (lambda src, out: src, "is the input model; choose another output file"),
    "output folder missing": (lambda src, out: out / "missing" / "p.onnx", "does not exist; create it first"),
    "output is a directory": (lambda src, out: out, "is a directory; name a file such as"),
    "output folder not writable": (lambda src, out: _unwritable(out) / "p.onnx", "is not writable; choose another"),
}


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_bad_output_path(case: str, dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    src_dir, out_dir = dirs
    source = src_dir / "mlp.onnx"
    onnx.save(mlp(), str(source))
    make, match = OUTPUT_CASES[case]
    target = make(source, out_dir)
    assert_cli_fails(["prune", str(source), "-o", str(target)], capsys, inputs=[source], out_dir=out_dir,
                     match=match)
    assert_api_fails(source, PruneConfig(), target, inputs=[source], error=OutputError, match=match,
                     out_dir=out_dir)
    assert folder_state(src_dir) == ["mlp.onnx"]
