"""Atomic replace is for regular files only: streams are written through, models refused, links kept.

Issue: `--report /dev/stdout` run as root renamed a regular file over the `/dev/stdout` link, and `-o /dev/null`
would have replaced the device. Every case here uses real fifos and links in ``tmp_path`` (never /dev itself),
so running these tests without the fix damages nothing outside ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from builders import mlp

from onnxprune.cli.main import main
from onnxprune.core import io as opio
from onnxprune.core.errors import OutputError
from onnxprune.core.io import check_output_path, save_model, write_text_atomic

MODELS = Path(__file__).resolve().parents[2] / "models"


class FifoReader:
    """Reads everything written to a fifo in a thread (a fifo blocks its writer until a reader opens it)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.data = b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with open(self.path, "rb") as fh:
            self.data = fh.read()

    def result(self) -> bytes:
        self.thread.join(timeout=60)
        return self.data


def test_output_kinds(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "link-to-fifo").symlink_to(fifo)
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    (tmp_path / "to-stdout").symlink_to("/dev/stdout")
    assert opio.output_kind("-") == "stdout"
    assert opio.output_kind(fifo) == "stream"
    assert opio.output_kind(tmp_path / "link-to-fifo") == "stream"
    assert opio.output_kind("/dev/stdout") == "stream"  # a link into /proc: whatever the shell opened
    assert opio.output_kind(tmp_path / "to-stdout") == "stream"
    assert opio.output_kind("/dev/null") == "stream"
    assert opio.output_kind(tmp_path / "real.json") == "file"
    assert opio.output_kind(tmp_path / "link.json") == "file"
    assert opio.output_kind(tmp_path / "new.json") == "file"


def test_text_to_a_fifo_and_a_link_to_one_is_written_through(tmp_path: Path) -> None:
    for name in ("fifo", "other"):
        target = tmp_path / name
        reader = FifoReader(target)
        path = target if name == "fifo" else tmp_path / "link"
        if name == "other":
            path.symlink_to(target)
        write_text_atomic(path, '{"a": 1}\n')
        assert reader.result() == b'{"a": 1}\n'
        assert stat.S_ISFIFO(os.lstat(target).st_mode), "the fifo was replaced by a regular file"
    assert os.path.islink(tmp_path / "link")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link", "other"]  # no temporary left


def test_link_to_a_regular_file_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "sub" / "real.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "report.json"
    link.symlink_to(real)
    write_text_atomic(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new"
    model_link = tmp_path / "model.onnx"
    (tmp_path / "sub" / "model.onnx").write_bytes(b"old")
    model_link.symlink_to(tmp_path / "sub" / "model.onnx")
    save_model(mlp(), model_link)
    assert model_link.is_symlink()
    assert (tmp_path / "sub" / "model.onnx").stat().st_size > 100


def test_models_are_refused_where_they_cannot_be_written_atomically(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "null").symlink_to("/dev/null")
    for target in (fifo, tmp_path / "null", "/dev/null", "-"):
        with pytest.raises(OutputError, match="regular files only"):
            check_output_path(target)
    with pytest.raises(OutputError, match="not a regular file"):
        save_model(mlp(), tmp_path / "null")
    assert os.readlink(tmp_path / "null") == "/dev/null"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    for target in (fifo, tmp_path / "null", "-"):  # reports, plans and plots may be streams
        check_output_path(target, stream=True)


def test_prune_to_dev_null_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    link = tmp_path / "out.onnx"
    link.symlink_to("/dev/null")
    assert main(["prune", str(MODELS / "digits_mlp.onnx"), "-o", str(link), "--no-validate"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a regular file" in err and "regular files only" in err
    assert os.readlink(link) == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_report_to_a_fifo_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reader = FifoReader(tmp_path / "report.fifo")
    out = tmp_path / "out.onnx"
    assert main(["prune", str(MODELS / "digits_mlp.onnx"), "-o", str(out), "--no-validate", "-q",
                 "--report", str(tmp_path / "report.fifo")]) == 0
    assert json.loads(reader.result())["mode"] == "structured"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "report.fifo").st_mode)


def dev_stdout(tmp_path: Path) -> str:
    """``/dev/stdout``, or where a regression could replace it (running as root), a link of the same shape.

    Why: a test that, on a regression, renames a file over the machine's ``/dev/stdout`` breaks every other
    program on it (it happened once while this test was written). The look-alike in ``tmp_path`` points
    at ``/proc/self/fd/1`` exactly as ``/dev/stdout`` does, so it exercises the same code.
    """
    if not os.access("/dev", os.W_OK):
        return "/dev/stdout"
    link = tmp_path / "links" / "stdout"
    link.parent.mkdir()
    link.symlink_to("/proc/self/fd/1")
    return str(link)


@pytest.mark.parametrize("target", ["-", "/dev/stdout"])
def test_report_to_stdout_prints_the_json(tmp_path: Path, target: str) -> None:
    """What users mean by `--report -` and `--report /dev/stdout`: the JSON on stdout, the link untouched."""
    if target != "-":
        target = dev_stdout(tmp_path)
    before = os.readlink(target) if os.path.islink(target) else None
    out = tmp_path / "out.onnx"
    proc = subprocess.run([sys.executable, "-m", "onnxprune", "prune", str(MODELS / "digits_mlp.onnx"), "-o",
                           str(out), "--no-validate", "--report", target],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # only the JSON: the summary went to stderr
    assert report["mode"] == "structured" and out.is_file()
    assert "onnxprune prune" in proc.stderr
    if before is not None:
        assert os.readlink(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) in (["out.onnx"], ["links", "out.onnx"])


def test_report_to_stdout_redirected_to_a_file_appends(tmp_path: Path) -> None:
    """`--report /dev/stdout >> log`: /dev/stdout is then the log file; it is appended to, never replaced."""
    log = tmp_path / "log.txt"
    log.write_text("earlier line\n")
    with open(log, "a") as fh:
        proc = subprocess.run([sys.executable, "-m", "onnxprune", "prune", str(MODELS / "digits_mlp.onnx"), "-o",
                               str(tmp_path / "out.onnx"), "--no-validate", "-q", "--report", dev_stdout(tmp_path)],
                              stdout=fh, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    head, _, rest = log.read_text().partition("\n")
    assert head == "earlier line" and json.loads(rest)["mode"] == "structured"
