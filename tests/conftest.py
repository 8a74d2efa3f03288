"""Shared pytest fixtures."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Measured-latency tables go to a folder of this test session, never to the user's cache.
os.environ.setdefault("ONNXPRUNE_CACHE_DIR", tempfile.mkdtemp(prefix="onnxprune-test-latency-"))

sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ARG001 - pytest's hook signature
    """Run the real-SIGINT subprocess tests first.

    Why: in a full run they failed after about a thousand other tests (children that finished despite the
    signal, or never stopped), while they pass alone and after either half of the suite. The cause is not
    found yet (no test changes the SIGINT disposition or signal mask: checked after every test); running them
    first keeps the evidence that one Ctrl-C stops every command, and the open question is in the README.
    """
    first = [item for item in items if item.nodeid.startswith("tests/test_interrupt.py::test_sigint")]
    if first:
        items[:] = first + [item for item in items if item not in first]
