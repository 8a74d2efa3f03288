"""``python -m onnxprune`` runs the CLI."""

from __future__ import annotations

import sys

from onnxprune.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
