"""Progress: a bar on a terminal, plain lines everywhere else.

Why: a bar helps a person waiting on a 10-minute calibration, but in a pipe, a log file or CI its carriage
returns only add noise; there a long loop prints one line every 10 % (or every 10 s when the total is
unknown or the steps are slow) instead, so a log still shows that work goes on. Loops that end within
:data:`LINE_AFTER_S` print nothing. Both go to stderr, so stdout stays clean for ``--json``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

_enabled = True

#: Plain progress lines start only once a loop has run this long (short loops stay silent).
LINE_AFTER_S = 2.0
#: ... and then come at least every this many seconds, or at every 10 % of a known total.
LINE_EVERY_S = 10.0


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
    """Wrap ``iterable`` in a tqdm bar on a terminal, or in progress lines elsewhere (see the module).

    Example:
        >>> list(progress(range(3), desc="runs"))
        [0, 1, 2]
    """
    if progress_enabled():
        return iter(tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, dynamic_ncols=True))
    if not _enabled:
        return iter(iterable)
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    return _lines(iterable, desc=desc, total=total)


def _lines(iterable: Iterable[T], *, desc: str, total: int | None) -> Iterator[T]:
    """Yield from ``iterable``, writing ``onnxprune: DESC: 40% (4/10), 12 s`` lines to stderr as it goes."""
    start = time.monotonic()
    last_time, last_tenth, done = start, 0, 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - start < LINE_AFTER_S:
            continue
        tenth = done * 10 // total if total else 0
        if tenth > last_tenth or now - last_time >= LINE_EVERY_S:
            share = f"{done / total:.0%} ({done}/{total})" if total else f"{done} done"
            stream = sys.stderr
            if stream is not None:
                stream.write(f"onnxprune: {desc}: {share}, {now - start:.0f} s\n")
                stream.flush()
            last_time, last_tenth = now, tenth


class Stages:
    """One line per finished stage of a long run (``onnxprune: <stage>: <count> <unit> in <s>s (<s>s total)``)
    on stderr when it is not a terminal, so a log shows where the time of a sensitivity or budget run went;
    loops inside a stage show their progress through :func:`progress`.

    Example:
        >>> clock = Stages()
        >>> clock.done("calibration", 256, "samples")  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._start = self._last = time.monotonic()

    def done(self, stage: str, count: int, unit: str) -> None:
        """Report that ``stage`` finished ``count`` ``unit``."""
        now = time.monotonic()
        stream = sys.stderr
        if _enabled and stream is not None and not (hasattr(stream, "isatty") and stream.isatty()):
            stream.write(f"onnxprune: {stage}: {count} {unit} in {now - self._last:.1f}s "
                         f"({now - self._start:.1f}s total)\n")
            stream.flush()
        self._last = now
