"""Options shared by the commands that run models in onnxruntime (``bench``, ``validate``).

One definition, so the flags are spelled, defaulted and documented the same way in every command.
"""

from __future__ import annotations

import argparse


def add_runtime_options(p: argparse.ArgumentParser, *, dim_help: str, seed_help: str) -> None:
    """Add ``--providers``, ``--threads``, ``--dim`` (repeatable) and ``--seed`` to a command's parser."""
    p.add_argument("--providers", default="cpu", help="comma-separated: cpu, cuda, tensorrt, ... (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE", help=dim_help)
    p.add_argument("--seed", type=int, default=0, help=seed_help)
