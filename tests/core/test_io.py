"""Loading and saving: round trips, atomicity, full disks, interrupts, and the caller's model left alone.

These tests write real files and read them back with onnx and onnxruntime; failures are provoked at the
operating-system boundary (a file write that raises ENOSPC, a file-size limit in a subprocess) rather than
by mocking onnx.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import conv_bn_relu, make_model, mlp, vinfo
from faults import FullDisk
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core import io as opio
from onnxprune.core.errors import ModelLoadError, OutputError, UnsupportedModelError
from onnxprune.core.io import check_output_path, file_size, load_model, save_model


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders save_model may have left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".onnxprune"))


def run_ort(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, feeds)


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def constant_weight_model() -> onnx.ModelProto:
    """A MatMul weight stored as float_data and another as a large Constant node (both paths of the writer)."""
    r = np.random.default_rng(3)
    w = r.standard_normal((40, 50)).astype(np.float32)
    c = r.standard_normal((50, 30)).astype(np.float32)
    float_data = helper.make_tensor("w", TensorProto.FLOAT, [40, 50], w.ravel().tolist())
    nodes = [
        helper.make_node("Constant", [], ["c"], name="const_c", value=numpy_helper.from_array(c, "c_value")),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
        helper.make_node("MatMul", ["h", "c"], ["out"], name="mm2"),
    ]
    return make_model(nodes, [vinfo("x", [2, 40])], [vinfo("out", [2, 30])], [float_data])


MODELS = {"conv_bn_relu": conv_bn_relu, "mlp": lambda: mlp(batch=2), "constant_weight": constant_weight_model}


def feeds_for(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    r = np.random.default_rng(0)
    out = {}
    for vi in model.graph.input:
        shape = [d.dim_value or 2 for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = r.standard_normal(shape).astype(np.float32)
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("external", [False, True])
def test_round_trip_is_exact_and_leaves_the_model_alone(tmp_path: Path, name: str, external: bool) -> None:
    model = MODELS[name]()
    before = model.SerializeToString()
    out = save_model(model, tmp_path / "m.onnx", external_data=external)
    assert model.SerializeToString() == before, "save_model must not change the caller's model"
    assert (tmp_path / "m.onnx.data").is_file() == external
    assert leftovers(tmp_path) == []
    onnx.checker.check_model(str(out), full_check=True)
    loaded = load_model(out)
    got, want = weights(loaded), weights(model)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    feeds = feeds_for(model)
    for a, b in zip(run_ort(out, feeds), run_ort(model, feeds), strict=True):
        np.testing.assert_array_equal(a, b)
    if not external:  # the streamed writer produces a file onnx parses to the very same message
        assert onnx.load(str(out)) == model


def test_external_data_moves_large_tensors_only(tmp_path: Path) -> None:
    model = constant_weight_model()
    save_model(model, tmp_path / "m.onnx", external_data=True)
    skeleton = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    assert skeleton.graph.initializer[0].data_location == TensorProto.EXTERNAL
    const = skeleton.graph.node[0].attribute[0].t
    assert const.data_location == TensorProto.EXTERNAL
    assert (tmp_path / "m.onnx").stat().st_size < 1024
    assert file_size(tmp_path / "m.onnx") == (tmp_path / "m.onnx").stat().st_size + (
        tmp_path / "m.onnx.data").stat().st_size
    small = conv_bn_relu(c_mid=2, c_out=2)  # every tensor under 1 KiB: nothing to move, no data file
    save_model(small, tmp_path / "s.onnx", external_data=True)
    assert not (tmp_path / "s.onnx.data").exists()
    assert leftovers(tmp_path) == []


def test_saving_twice_gives_identical_bytes(tmp_path: Path) -> None:
    model = constant_weight_model()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for external in (False, True):
        save_model(model, a / "m.onnx", external_data=external)
        save_model(model, b / "m.onnx", external_data=external)
        assert sha256(a / "m.onnx") == sha256(b / "m.onnx")
        if external:
            assert sha256(a / "m.onnx.data") == sha256(b / "m.onnx.data")


def test_load_copies_a_model_proto() -> None:
    model = mlp()
    loaded = load_model(model)
    assert loaded == model and loaded is not model
    loaded.graph.node[0].name = "changed"
    assert model.graph.node[0].name == "fc1"


@pytest.mark.parametrize("external", [False, True])
@pytest.mark.parametrize("budget", [0, 600, 5000])
def test_full_disk_mid_write_leaves_nothing_and_keeps_the_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external: bool, budget: int) -> None:
    model = constant_weight_model()
    before = model.SerializeToString()
    old = tmp_path / "m.onnx"
    save_model(mlp(), old)  # an earlier output at the same path must survive a failed overwrite
    old_hash = sha256(old)
    monkeypatch.setattr(opio, "open", FullDisk(budget), raising=False)
    with pytest.raises(OutputError, match=r"cannot write .*m\.onnx \(No space left on device\); free disk space"):
        save_model(model, old, external_data=external)
    monkeypatch.undo()
    assert model.SerializeToString() == before
    assert sha256(old) == old_hash
    assert not (tmp_path / "m.onnx.data").exists()
    assert leftovers(tmp_path) == []


def test_full_disk_at_rename_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(opio.os, "replace", no_space)
    with pytest.raises(OutputError, match="No space left on device"):
        save_model(mlp(), tmp_path / "m.onnx", external_data=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_interrupt_after_temp_file_written_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace
    seen: list[str] = []

    def interrupted(src: object, dst: object) -> None:
        seen.append(Path(str(src)).name)
        assert Path(str(src)).stat().st_size > 0  # the temporary file really was written
        raise KeyboardInterrupt

    monkeypatch.setattr(opio.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_model(constant_weight_model(), tmp_path / "m.onnx", external_data=True)
    monkeypatch.setattr(opio.os, "replace", real_replace)
    assert seen == ["m.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_real_write_limit_in_a_subprocess(tmp_path: Path) -> None:
    """An OS-enforced file-size limit (EFBIG) instead of a patched write: same clean failure."""
    src = tmp_path / "in.onnx"
    onnx.save(constant_weight_model(), str(src))
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        from onnxprune.core.io import load_model, save_model
        save_model(load_model({str(src)!r}), {str(tmp_path / "out.onnx")!r}, external_data=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "OutputError: cannot write" in proc.stderr and "File too large" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_output_checks(tmp_path: Path) -> None:
    src = tmp_path / "in.onnx"
    save_model(mlp(), src, external_data=True)
    with pytest.raises(OutputError, match="is the input model"):
        check_output_path(src, inputs=(src,))
    with pytest.raises(OutputError, match="is the input model"):
        check_output_path(tmp_path / "." / "in.onnx", inputs=(src,))
    os.link(src, tmp_path / "hardlink.onnx")
    with pytest.raises(OutputError, match="is the input model"):
        check_output_path(tmp_path / "hardlink.onnx", inputs=(src,))
    renamed = tmp_path / "other.onnx"  # reads in.onnx.data: writing in.onnx would overwrite its data
    os.rename(src, renamed)
    with pytest.raises(OutputError, match=r"would overwrite .*in\.onnx\.data, which the input model"):
        check_output_path(tmp_path / "in.onnx", inputs=(renamed,))
    with pytest.raises(OutputError, match="does not exist; create it first"):
        check_output_path(tmp_path / "missing" / "out.onnx")
    with pytest.raises(OutputError, match="is a directory"):
        check_output_path(tmp_path)
    with pytest.raises(OutputError, match="is not writable"):
        check_output_path(unwritable_folder(tmp_path) / "out.onnx")
    assert leftovers(tmp_path) == []


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write in: chmod works for normal users, root needs /proc/self."""
    if os.geteuid() == 0:
        return Path("/proc/self")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_save_refuses_inline_over_2_gib_without_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opio, "PROTOBUF_LIMIT", 1000)
    with pytest.raises(OutputError, match="over protobuf's 2 GiB limit .* save it with external data"):
        save_model(mlp(), tmp_path / "m.onnx", external_data=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_save_refuses_unloaded_external_references(tmp_path: Path) -> None:
    save_model(mlp(), tmp_path / "a.onnx", external_data=True)
    skeleton = onnx.load(str(tmp_path / "a.onnx"), load_external_data=False)
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match="still refers to external data that was never loaded"):
        save_model(skeleton, tmp_path / "out" / "b.onnx")
    assert list((tmp_path / "out").iterdir()) == []


# -- loading bad files (the CLI side of each is in test_bad_input.py) ---------------------------------
def test_load_rejects_external_data_outside_the_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    save_model(mlp(), tmp_path / "sub" / "m.onnx", external_data=True)
    model = onnx.load(str(tmp_path / "sub" / "m.onnx"), load_external_data=False)
    (tmp_path / "sub" / "m.onnx.data").rename(tmp_path / "m.onnx.data")
    for location in ("../m.onnx.data", str(tmp_path / "m.onnx.data")):
        for t in model.graph.initializer:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, str(tmp_path / "sub" / "bad.onnx"))
        with pytest.raises(ModelLoadError, match="points outside the model's folder"):
            load_model(tmp_path / "sub" / "bad.onnx")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("length", "abc", "are not integers"),
    ("offset", "-4", "negative external data offset"),
    ("length", "12", r"external data length is 12; the model and its data file do not match"),
])
def test_load_rejects_bad_external_offsets(tmp_path: Path, key: str, value: str, message: str) -> None:
    save_model(mlp(), tmp_path / "m.onnx", external_data=True)
    model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == key:
            entry.value = value
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ModelLoadError, match=message):
        load_model(tmp_path / "m.onnx")


def test_checker_view_still_catches_bad_weights() -> None:
    model = conv_bn_relu()
    short = onnx.ModelProto()
    short.CopyFrom(model)
    w2 = next(t for t in short.graph.initializer if t.name == "w2")
    w2.raw_data = w2.raw_data[:-4]
    with pytest.raises(ModelLoadError, match=r"raw data of tensor 'w2' does not match its shape \[6, 8, 3, 3\]"):
        load_model(short)
    w2.raw_data = numpy_helper.from_array(np.zeros((6, 8, 3, 3), np.float32)).raw_data
    w2.data_type = TensorProto.UNDEFINED
    with pytest.raises(ModelLoadError, match="'w2' has an UNDEFINED data type"):
        load_model(short)


def test_checker_view_accepts_old_ir_with_initializers_as_inputs() -> None:
    model = conv_bn_relu()
    model.ir_version = 3
    model.opset_import[0].version = 8
    model.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer)
    onnx.checker.check_model(model)
    assert load_model(model) == model


def test_opset_bounds() -> None:
    for version, message in ((5, "older than the oldest supported"), (999, "newer than the installed onnx")):
        model = mlp()
        model.opset_import[0].version = version
        with pytest.raises(UnsupportedModelError, match=message):
            load_model(model)
