"""Progress bars that show on a terminal and stay silent everywhere else.

Why: a bar helps a person waiting on a 10-minute calibration, but in a pipe, a log file or CI it only
adds noise (carriage returns in logs). Bars go to stderr, so stdout stays clean for ``--json``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
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


def stage_lines_enabled() -> bool:
    """True when long runs should write one plain line per stage: switched on and stderr is no terminal
    (a log file, a pipe, CI), where bars would only leave carriage returns."""
    stream = sys.stderr
    return _enabled and stream is not None and not (hasattr(stream, "isatty") and stream.isatty())


class Stages:
    """Progress of a long run in stages: a bar per stage on a terminal, else one line per finished stage
    (``onnxprune: <stage>: <count> <unit> in <s>s (<s>s total)``) and a line every ``every`` seconds
    while a long stage runs.

    Example:
        >>> clock = Stages()
        >>> clock.done("calibration", 256, "samples")  # doctest: +SKIP
    """

    def __init__(self, every: float = 30.0) -> None:
        self._start = self._last = time.perf_counter()
        self._every = every

    def done(self, stage: str, count: int, unit: str) -> None:
        """Report that ``stage`` finished ``count`` ``unit``."""
        now = time.perf_counter()
        if stage_lines_enabled():
            sys.stderr.write(f"onnxprune: {stage}: {count} {unit} in {now - self._last:.1f}s "
                             f"({now - self._start:.1f}s total)\n")
        self._last = now

    def ticker(self, stage: str, total: int) -> Callable[[int], None]:
        """A callback taking the number of finished items of ``stage`` (of ``total``)."""
        if progress_enabled():
            bar = tqdm(total=total, desc=stage, leave=False, file=sys.stderr, dynamic_ncols=True)

            def tick_bar(i: int) -> None:
                bar.update(i - bar.n)
                if i >= total:
                    bar.close()

            return tick_bar
        state = {"t": time.perf_counter()}

        def tick_line(i: int) -> None:
            now = time.perf_counter()
            if i < total and now - state["t"] >= self._every and stage_lines_enabled():
                sys.stderr.write(f"onnxprune: {stage}: {i}/{total} after {now - self._last:.1f}s\n")
                state["t"] = now

        return tick_line
