"""Progress bars that show on a terminal and stay silent everywhere else.

Why: a bar helps a person waiting on a 10-minute calibration, but in a pipe, a log file or CI it only
adds noise (carriage returns in logs). Bars go to stderr, so stdout stays clean for ``--json``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

_enabled = True


def set_progress_enabled(enabled: bool) -> None:
    """Turn all bars on or off for this process (the CLI's ``--quiet`` turns them off)."""
    global _enabled
    _enabled = bool(enabled)


def progress_switched_on() -> bool:
    """The switch :func:`set_progress_enabled` sets (whatever the terminal or ``CI`` say)."""
    return _enabled


def progress_enabled() -> bool:
    """True when bars should show: enabled, not in CI (env ``CI`` set), and stderr is a terminal."""
    if not _enabled or os.environ.get("CI"):
        return False
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar when bars should show, else return it unchanged.

    Example:
        >>> list(progress(range(3), desc="runs"))
        [0, 1, 2]
    """
    if not progress_enabled():
        return iter(iterable)
    return iter(tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, dynamic_ncols=True))
