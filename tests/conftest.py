"""Shared pytest fixtures."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Measured-latency tables go to a folder of this test session, never to the user's cache.
os.environ.setdefault("ONNXPRUNE_CACHE_DIR", tempfile.mkdtemp(prefix="onnxprune-test-latency-"))

sys.path.insert(0, str(Path(__file__).parent))

