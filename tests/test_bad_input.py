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
from onnxprune.core.errors import ConfigError, ModelLoadError, OnnxPruneError, OutputError, UnsupportedModelError
from onnxprune.core.io import save_model
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
    # Warnings logged before the failure (e.g. about pruned widths) may precede it; the error itself is one line.
    lines = [line for line in captured.err.strip().splitlines() if not line.startswith("onnxprune: WARNING: ")]
    assert code == 1, captured.err
    assert len(lines) == 1, captured.err
    assert captured.err.strip().splitlines()[-1] == lines[0]
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
    from onnxprune.core.io import load_model

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
    (["--round-to", "0"], r"--round-to must be auto or an integer >= 1, got 0"),
    (["--min-channels", "0"], r"--min-channels must be >= 1, got 0"),
    (["--min-size", "-1"], r"--min-size must be >= 0, got -1"),
    (["--batch", "0"], r"--batches must be >= 1, got 0"),
    (["--bench", "--batch", "1,-2"], r"--batches must be >= 1, got -2"),
    (["--bench", "--batches", "1,-2"], r"--batches must be >= 1, got -2"),
    (["--runs", "0"], r"--runs must be >= 1"),
    (["--warmup", "-1"], r"--warmup >= 0"),
    (["--threads", "0"], r"--threads must be >= 1, got 0"),
    (["--target-macs", "0"], r"--target-macs must be in \(0, 1\], got 0\.0"),
    (["--target-macs", "1.5"], r"--target-macs must be in \(0, 1\]"),
    (["--target-params", "-0.5"], r"--target-params must be in \(0, 1\]"),
    (["--mode", "unstructured", "--target-macs", "0.5"], r"--target-macs does not apply to --mode unstructured"),
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
    (dict(sparsity=1.0), r"^sparsity must be in \[0, 1\)"),
    (dict(ratio=-0.1), r"^ratio must be in \[0, 1\)"),
    (dict(mode="nm", nm="3:3"), r"N:M pattern needs 0 < n < m .*got 3:3"),
    (dict(round_to=0), r"^round_to must be auto or an integer >= 1"),
    (dict(min_channels=0), r"^min_channels must be >= 1"),
    (dict(bench=True, bench_batches=(0,)), r"^bench_batches must be >= 1"),
    (dict(bench=True, bench_runs=0), r"^bench_runs must be >= 1"),
    (dict(target_macs=2.0), r"^target_macs must be in \(0, 1\]"),
    (dict(dims={"N": 0}), r"^dims N=0: .*(positive integer|must be >= 1)"),
    (dict(mode="sideways"), r"^mode must be one of"),
]


@pytest.mark.parametrize(("changes", "match"), CONFIG_CASES, ids=[str(c) for c, _ in CONFIG_CASES])
def test_option_out_of_range_api(changes: dict[str, object], match: str, dirs: tuple[Path, Path]) -> None:
    """The API refuses a bad option where it is made (the constructor), naming the parameter."""
    src_dir, out_dir = dirs
    source = src_dir / "mlp.onnx"
    onnx.save(mlp(), str(source))
    before_hash, before_dir = digest([source]), folder_state(out_dir)
    with pytest.raises(ConfigError, match=match) as info:
        PruneConfig(**changes)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)  # ConfigError is also a ValueError
    assert digest([source]) == before_hash and folder_state(out_dir) == before_dir


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


# -- models onnxprune can only partly prune ------------------------------------------------------------
def _run_ok(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    return captured.out, captured.err


def _report(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def _ort(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("recipe", ["reshape", "weightnorm"])
def test_fold_is_exact_and_leaves_the_input_alone(recipe: str) -> None:
    from builders import computed_weights

    from onnxprune.core.fold import fold_constants
    from onnxprune.runtime.session import run_constant_graph

    model = computed_weights(recipe=recipe)
    before = model.SerializeToString()
    result = fold_constants(model, run_constant_graph)
    assert model.SerializeToString() == before
    assert result.folded and not result.unfolded
    conv1 = next(n for n in result.model.graph.node if n.name == "conv1")
    stored = {t.name for t in result.model.graph.initializer}
    assert conv1.input[1] in stored and conv1.input[2] in stored
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Relu", "Conv"]
    onnx.checker.check_model(result.model, full_check=True)
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(_ort(result.model, x), _ort(model, x))  # bit-exact, not merely close
    assert fold_constants(result.model, run_constant_graph).model is result.model  # nothing left to fold


@pytest.mark.parametrize("recipe", ["reshape", "weightnorm"])
@pytest.mark.parametrize("mode", ["structured", "unstructured"])
def test_computed_weights_are_folded_then_pruned(recipe: str, mode: str, dirs: tuple[Path, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from builders import computed_weights

    src_dir, out_dir = dirs
    source = src_dir / "m.onnx"
    onnx.save(computed_weights(recipe=recipe), str(source))
    before = digest([source])
    out, report = out_dir / "p.onnx", out_dir / "r.json"
    amount = ["--ratio", "0.5"] if mode == "structured" else ["--sparsity", "0.5"]
    _run_ok(["prune", str(source), "-o", str(out), "--mode", mode, *amount, "--report", str(report)], capsys)
    assert digest([source]) == before
    data = _report(report)
    assert data["folded_constants"]
    assert data["params_after"] < data["params_before"]
    if mode == "structured":  # conv1's output channels (8) are a prunable group once its weight is stored
        assert any(g["size_before"] == 8 and g["size_after"] == 4 for g in data["groups"])
        assert data["validation"]["exact"]["passed"] is True


@pytest.mark.parametrize("recipe", ["random", "custom"])
def test_unfoldable_weights_name_the_layer_and_leave_it_alone(recipe: str, dirs: tuple[Path, Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from builders import computed_weights

    from onnxprune.core.io import load_model

    src_dir, out_dir = dirs
    source = src_dir / "m.onnx"
    model = computed_weights(recipe=recipe)
    onnx.save(model, str(source))
    out = out_dir / "p.onnx"
    argv = ["prune", str(source), "-o", str(out), "--mode", "unstructured"]
    if recipe == "custom":
        argv.append("--no-validate")  # onnxruntime cannot run a com.example op; the pruning itself still runs
    _, err = _run_ok(argv, capsys)
    reason = "draws random numbers" if recipe == "random" else "custom-domain op"
    assert re.search(rf"layer 'conv1' \(Conv\) is not prunable: its weight .* computed at run time .*{reason}", err)
    pruned = load_model(out)
    assert [n.op_type for n in pruned.graph.node] == [n.op_type for n in model.graph.node]
    conv2_w = next(n for n in pruned.graph.node if n.name == "conv2").input[1]
    w = next(t for t in pruned.graph.initializer if t.name == conv2_w)
    assert (onnx.numpy_helper.to_array(w) == 0).mean() == pytest.approx(0.5, abs=0.01)  # the rest still prunes


def test_custom_domain_op_blocks_only_its_groups(dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from builders import custom_op_chain

    src_dir, out_dir = dirs
    source = src_dir / "m.onnx"
    onnx.save(custom_op_chain(), str(source))
    out, report = out_dir / "p.onnx", out_dir / "r.json"
    _run_ok(["prune", str(source), "-o", str(out), "--ratio", "0.5", "--report", str(report)], capsys)
    data = _report(report)
    assert any("Trilu" in b["reason"] and "no rule" in b["reason"] for b in data["blocked"]), data["blocked"]
    assert [(g["size_before"], g["size_after"]) for g in data["groups"] if g["size_after"] != g["size_before"]] \
        == [(8, 4)]
    x = np.random.default_rng(2).standard_normal((1, 3, 6, 6)).astype(np.float32)
    assert _ort(out, x).shape == (1, 4, 6, 6)  # onnxruntime runs the pruned model, custom op included


def test_groups_after_a_custom_op_still_prune(dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from builders import custom_op_chain

    src_dir, out_dir = dirs
    source = src_dir / "m.onnx"
    onnx.save(custom_op_chain(custom_first=True), str(source))
    report = out_dir / "r.json"
    _run_ok(["prune", str(source), "-o", str(out_dir / "p.onnx"), "--ratio", "0.5", "--report", str(report)], capsys)
    data = _report(report)
    assert any("Trilu" in b["reason"] and "no rule" in b["reason"] for b in data["blocked"]), data["blocked"]
    # conv2 -> Relu -> head: conv2's output channels are proven by its weight, its other dims are not needed
    assert [(g["size_before"], g["size_after"]) for g in data["groups"] if g["size_after"] != g["size_before"]] \
        == [(8, 4)]
    x = np.random.default_rng(2).standard_normal((1, 3, 6, 6)).astype(np.float32)
    assert _ort(out_dir / "p.onnx", x).shape == (1, 4, 6, 6)


@pytest.mark.parametrize("declare", [False, True])
def test_shape_unknown_past_a_custom_op_blocks_with_a_reason(declare: bool, dirs: tuple[Path, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from builders import custom_op_flatten

    src_dir, out_dir = dirs
    source = src_dir / "m.onnx"
    onnx.save(custom_op_flatten(declare=declare), str(source))
    out, _ = _run_ok(["analyze", str(source)], capsys)
    unknown = re.search(r"blocked: 'Flatten_\d+' \(Flatten\) on relu_\d+\[axis 1\]: the shape of 'relu_\d+' is "
                        r"unknown", out)
    assert bool(unknown) is not declare, out  # declared in value_info: inference goes on past the custom op
    report = out_dir / "r.json"
    _run_ok(["prune", str(source), "-o", str(out_dir / "p.onnx"), "--ratio", "0.5", "--report", str(report)], capsys)
    changed = [(g["size_before"], g["size_after"]) for g in _report(report)["groups"]
               if g["size_after"] != g["size_before"]]
    assert changed == ([(4, 2)] if declare else [])
    x = np.random.default_rng(3).standard_normal((1, 3, 3, 3)).astype(np.float32)
    assert _ort(out_dir / "p.onnx", x).shape == (1, 5)


def _dynamic_hw() -> onnx.ModelProto:
    from builders import flatten_gemm

    model = flatten_gemm()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    return model


@pytest.mark.parametrize("mode", ["structured", "unstructured"])
def test_unresolved_dynamic_shape_asks_for_dim(mode: str, dirs: tuple[Path, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """H = W = 3 is the only size the Flatten -> Gemm accepts, and no candidate size is 3: ask for it."""
    src_dir, out_dir = dirs
    source = src_dir / "dyn.onnx"
    onnx.save(_dynamic_hw(), str(source))
    out = out_dir / "p.onnx"
    assert_cli_fails(["prune", str(source), "-o", str(out), "--mode", mode], capsys, inputs=[source],
                     out_dir=out_dir, match=r"none of the sizes tried for its dynamic input axes 'x' axis 2 \(H\), "
                                            r"'x' axis 3 \(W\); pass the sizes it expects, e\.g\. --dim x:2=VALUE")
    assert_api_fails(source, PruneConfig(mode=mode), out, inputs=[source], error=ConfigError,
                     match=r"--dim x:2=VALUE")
    _run_ok(["prune", str(source), "-o", str(out), "--mode", mode, "--dim", "H=3", "--dim", "W=3"], capsys)
    assert out.is_file()


def test_exclude_matching_nothing_warns_and_prunes(dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    src_dir, out_dir = dirs
    source = src_dir / "m.onnx"
    onnx.save(conv_bn_relu(), str(source))
    for mode in ("structured", "unstructured"):
        out = out_dir / f"{mode}.onnx"
        _, err = _run_ok(["prune", str(source), "-o", str(out), "--mode", mode, "--exclude", "no_such_layer*"], capsys)
        assert "--exclude" in err and "'no_such_layer*' matched no layer" in err
        assert out.is_file()
        result = prune(source, PruneConfig(mode=mode, exclude=("no_such_layer*",)))
        assert any("matched no layer" in w for w in result.warnings)


def test_plan_for_another_model(dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from builders import residual_add

    from onnxprune.core.errors import PlanError

    src_dir, out_dir = dirs
    source, other = src_dir / "a.onnx", src_dir / "b.onnx"
    onnx.save(conv_bn_relu(), str(source))
    onnx.save(residual_add(), str(other))
    plan = src_dir / "plan.json"
    _run_ok(["prune", str(source), "-o", str(src_dir / "a_pruned.onnx"), "--plan-out", str(plan)], capsys)
    out = out_dir / "p.onnx"
    inputs = [other, plan]
    assert_cli_fails(["prune", str(other), "-o", str(out), "--plan-in", str(plan)], capsys, inputs=inputs,
                     out_dir=out_dir, match=r"plan was made for another model .*make a new plan")
    assert_api_fails(other, PruneConfig(plan_in=str(plan)), out, inputs=inputs, error=PlanError,
                     match="made for another model")
    broken = _write(src_dir / "broken.json", b"{not json")
    assert_cli_fails(["prune", str(other), "-o", str(out), "--plan-in", str(broken)], capsys, inputs=[other, broken],
                     out_dir=out_dir, match="plan is not valid JSON")
    assert_cli_fails(["prune", str(other), "-o", str(out), "--plan-in", str(src_dir / "none.json")], capsys,
                     inputs=[other], out_dir=out_dir, match=r"cannot read plan .*none\.json")


# -- the disk fills while saving -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["structured", "unstructured", "nm"])
@pytest.mark.parametrize("external", [False, True])
def test_full_disk_during_save(mode: str, external: bool, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from faults import FullDisk

    from onnxprune.core import io as opio

    src_dir, out_dir = dirs
    source = src_dir / "m.onnx"
    save_model(conv_bn_relu(c_mid=16, c_out=16), source, external_data=external)
    monkeypatch.setattr(opio, "open", FullDisk(budget=700), raising=False)
    # the save is what fills the disk here: the benchmark (on by default from 0.1M MACs) writes its own copies first
    argv = ["prune", str(source), "-o", str(out_dir / "p.onnx"), "--mode", mode, "--no-bench"]
    assert_cli_fails(argv, capsys, inputs=_all_files(src_dir), out_dir=out_dir,
                     match=r"cannot write .*p\.onnx \(No space left on device\); free disk space or choose another")
    assert_api_fails(source, PruneConfig(mode=mode), out_dir / "p.onnx", inputs=_all_files(src_dir),
                     error=OutputError, match="No space left on device")


def test_plan_out_in_a_missing_folder_is_refused_before_work(dirs: tuple[Path, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    src_dir, out_dir = dirs
    source = src_dir / "m.onnx"
    onnx.save(conv_bn_relu(), str(source))
    plan = out_dir / "missing" / "plan.json"
    assert_cli_fails(["prune", str(source), "-o", str(out_dir / "p.onnx"), "--plan-out", str(plan)], capsys,
                     inputs=[source], out_dir=out_dir, match=r"output folder .*missing does not exist")
    assert_api_fails(source, PruneConfig(plan_out=str(plan)), out_dir / "p.onnx", inputs=[source], error=OutputError,
                     match="does not exist")


BENCH_CASES = [
    (["--batch", "0"], r"batches must be integers >= 1"),
    (["--runs", "0"], r"runs must be integers >= 1"),
    (["--warmup", "-1"], r"warmup must be integers >= 0"),
    (["--threads", "0"], r"threads must be at least 1"),
    (["--cuda-graph"], r"CUDA graphs need the CUDA provider; add --providers cuda"),
]


@pytest.mark.parametrize(("args", "match"), BENCH_CASES, ids=[" ".join(a) for a, _ in BENCH_CASES])
def test_bench_option_out_of_range(args: list[str], match: str, dirs: tuple[Path, Path],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    src_dir, out_dir = dirs
    source = src_dir / "mlp.onnx"
    onnx.save(mlp(), str(source))
    assert_cli_fails(["bench", str(source), *args], capsys, inputs=[source], out_dir=out_dir, match=match)


def test_fold_leaves_a_computed_mask_alone() -> None:
    """A bool mask computed from constants (GPT-2's legacy export: ConstantOfShape -> bool) is neither a weight
    nor a shape: folding it into a BOOL initializer changed the model's stored types for nothing."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.core.fold import fold_constants
    from onnxprune.runtime.session import run_constant_graph

    shape = numpy_helper.from_array(np.array([3], np.int64), "mask_shape")
    nodes = [helper.make_node("ConstantOfShape", ["mask_shape"], ["mask"],
                              value=helper.make_tensor("v", TensorProto.BOOL, [1], [True])),
             helper.make_node("Where", ["mask", "x", "x"], ["y"])]
    graph = helper.make_graph(nodes, "masked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = fold_constants(model, run_constant_graph)
    assert result.folded == ()
    assert [t.data_type for t in result.model.graph.initializer] == [TensorProto.INT64]


@pytest.mark.parametrize("vocab", [16, 512])
def test_fold_does_not_store_a_tied_table_twice(vocab: int, tmp_path: Path) -> None:
    """A tied LM head reads ``Transpose(embedding)`` while the embedding Gather reads the table itself
    (the dynamo exporter's GPT-2). Folding the transpose would store the table twice and make the pruned file
    bigger than the original; a small table (under 64 KB) may still be folded."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.core.fold import fold_constants
    from onnxprune.runtime.session import run_constant_graph

    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((vocab, 32)).astype(np.float32), "wte")
    nodes = [helper.make_node("Gather", ["wte", "ids"], ["emb"]),
             helper.make_node("Transpose", ["wte"], ["wte_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["emb", "wte_t"], ["logits"])]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 4, vocab])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = fold_constants(model, run_constant_graph)
    stored = sum(t.ByteSize() for t in result.model.graph.initializer)
    if vocab * 32 * 4 >= 1 << 16:
        assert result.folded == ()
        assert stored == table.ByteSize()
        assert any("tied weights" in u.reason for u in result.unfolded)
    else:
        assert result.folded == ("wte_t",)
