"""Fault injection for file writes: a disk that fills up after a budget of bytes.

Shared by the io tests and the bad-input tests, so both simulate the same failure.
"""

from __future__ import annotations

import errno
import os


class FullDisk:
    """``open`` replacement whose files raise ENOSPC once ``budget`` bytes have been written in total."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.written = 0

    def __call__(self, path: object, mode: str = "r", *args: object, **kwargs: object):
        fh = open(path, mode, *args, **kwargs)
        if "w" not in mode:
            return fh
        disk = self
        real_write = fh.write

        class Handle:
            def __getattr__(self, name: str) -> object:
                return getattr(fh, name)

            def __enter__(self) -> Handle:
                return self

            def __exit__(self, *exc: object) -> None:
                fh.close()

            def write(self, data: bytes) -> int:
                if disk.written + len(data) > disk.budget:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                disk.written += len(data)
                return real_write(data)

        return Handle()
