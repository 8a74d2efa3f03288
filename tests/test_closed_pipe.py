"""A reader that closes the pipe early ends the command quietly, with exit 0.

Issue: `onnxprune analyze M --groups | head -3` printed "internal error: BrokenPipeError ... no output was
written" (false) and exited 3. Like cat or grep, onnxprune now stops quietly: exit 0, nothing on stderr.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

MODELS = Path(__file__).resolve().parent / ".." / "models"


def test_analyze_into_head_ends_quietly() -> None:
    # densenet's group list is ~370 kB, far more than a pipe holds: head's exit really breaks the pipe.
    cmd = (f"{shlex.quote(sys.executable)} -m onnxprune analyze {shlex.quote(str(MODELS / 'tv_densenet121.onnx'))}"
           f" --groups | head -1; exit ${{PIPESTATUS[0]}}")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert proc.stdout.startswith("model ") and proc.stdout.count("\n") == 1
    assert proc.stderr == ""
    assert proc.returncode == 0


def test_a_pipe_closed_before_the_first_write() -> None:
    """Deterministic: the reader is gone before onnxprune writes anything (small output, flushed at the end)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "onnxprune", "analyze", str(MODELS / "digits_cnn.onnx"),
                               "--json"], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 0
