"""Channel axes and index maps: the vocabulary of structured pruning.

A *slot* is one axis of one tensor (:class:`ChannelAxis`). Op rules relate positions of two slots with an
:class:`IndexMap` (a :class:`Coupling`); the analysis merges coupled positions into classes, the *root
channels* of a group, and describes every member slot by an index map from root channels to the member's
positions. All index arrays are sorted unique ``int64``.

Kinds (all frozen, all composable with :meth:`IndexMap.then`):

* :class:`Identity`: position ``i`` is position ``i`` (elementwise ops, the output axis of a Conv).
* :class:`Offset`: ``i -> start + i`` for ``i < length`` (Concat input inside its output; a Split or Slice
  output inside its input).
* :class:`Block`: ``i -> start + [i*size, (i+1)*size)`` (Flatten/Reshape folding ``C x H x W`` into features;
  GroupNormalization groups).
* :class:`Strided`: ``i -> start + i*step`` (Slice with a step).
* :class:`Table`: any other mapping, as explicit ``positions`` and their ``roots``.
* :class:`Composed`: ``first`` then ``second``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_I64 = np.int64


def as_index(values: object) -> np.ndarray:
    """A sorted unique int64 array from any integer sequence."""
    return np.unique(np.asarray(values, dtype=_I64).reshape(-1))


@dataclass(frozen=True, order=True)
class ChannelAxis:
    """One axis of one tensor, by name; ``axis`` is always non-negative.

    ``reader`` is set only on a constant shared by several layers that each get their own copy of it (see
    :mod:`onnxprune.structured.sharing`): it names the node whose copy this slot is.
    """

    tensor: str
    axis: int
    reader: str = ""

    @property
    def plain(self) -> ChannelAxis:
        """The slot without its reader (what op rules see)."""
        return ChannelAxis(self.tensor, self.axis) if self.reader else self

    def __str__(self) -> str:
        own = f" (copy read by '{self.reader}')" if self.reader else ""
        return f"{self.tensor}[axis {self.axis}]{own}"


class IndexMap:
    """Maps root channel indices (sorted int64) to member positions, and back.

    ``forward`` may return several positions per root (``Block``) and ``inverse`` returns the roots that own
    any of the given positions. ``pairs(n)`` lists ``(root, position)`` pairs for roots ``0..n-1``, which is
    how the analysis turns a coupling into edges between positions.
    """

    def forward(self, roots: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def inverse(self, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(root, position) pairs for the roots ``0..n-1`` that this map defines."""
        raise NotImplementedError

    def then(self, other: IndexMap) -> IndexMap:
        """``self`` followed by ``other`` (``other`` maps this map's positions onward)."""
        if isinstance(self, Identity):
            return other
        if isinstance(other, Identity):
            return self
        return Composed(self, other)


@dataclass(frozen=True)
class Identity(IndexMap):
    """Root ``i`` is position ``i``."""

    def forward(self, roots: np.ndarray) -> np.ndarray:
        return as_index(roots)

    def inverse(self, positions: np.ndarray) -> np.ndarray:
        return as_index(positions)

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        r = np.arange(n, dtype=_I64)
        return r, r

    def __str__(self) -> str:
        return "identity"


@dataclass(frozen=True)
class Offset(IndexMap):
    """Root ``i`` (``i < length``) is position ``start + i``."""

    start: int
    length: int

    def forward(self, roots: np.ndarray) -> np.ndarray:
        r = as_index(roots)
        return r[(r >= 0) & (r < self.length)] + self.start

    def inverse(self, positions: np.ndarray) -> np.ndarray:
        p = as_index(positions) - self.start
        return p[(p >= 0) & (p < self.length)]

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        r = np.arange(min(n, self.length), dtype=_I64)
        return r, r + self.start

    def __str__(self) -> str:
        return f"offset {self.start} (+{self.length})"


@dataclass(frozen=True)
class Block(IndexMap):
    """Root ``i`` is the positions ``start + i*size ... start + (i+1)*size - 1``."""

    size: int
    start: int = 0

    def forward(self, roots: np.ndarray) -> np.ndarray:
        r = as_index(roots)
        return (self.start + (r[:, None] * self.size + np.arange(self.size, dtype=_I64)[None, :])).reshape(-1)

    def inverse(self, positions: np.ndarray) -> np.ndarray:
        p = as_index(positions) - self.start
        return np.unique(p[p >= 0] // self.size)

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        r = np.repeat(np.arange(n, dtype=_I64), self.size)
        return r, self.start + np.arange(n * self.size, dtype=_I64)

    def __str__(self) -> str:
        return f"block of {self.size}" + (f" from {self.start}" if self.start else "")


@dataclass(frozen=True)
class Strided(IndexMap):
    """Root ``i`` (``i < length``) is position ``start + i*step`` (``step > 0``)."""

    start: int
    step: int
    length: int

    def forward(self, roots: np.ndarray) -> np.ndarray:
        r = as_index(roots)
        r = r[(r >= 0) & (r < self.length)]
        return self.start + r * self.step

    def inverse(self, positions: np.ndarray) -> np.ndarray:
        p = as_index(positions) - self.start
        ok = (p >= 0) & (p % self.step == 0) & (p // self.step < self.length)
        return p[ok] // self.step

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        r = np.arange(min(n, self.length), dtype=_I64)
        return r, self.start + r * self.step

    def __str__(self) -> str:
        return f"every {self.step} from {self.start} (x{self.length})"


@dataclass(frozen=True, eq=False)
class Table(IndexMap):
    """Explicit map: ``positions[k]`` belongs to root ``roots[k]`` (positions sorted, unique)."""

    positions: np.ndarray = field(repr=False)
    roots: np.ndarray = field(repr=False)

    def forward(self, roots: np.ndarray) -> np.ndarray:
        return self.positions[np.isin(self.roots, as_index(roots))]

    def inverse(self, positions: np.ndarray) -> np.ndarray:
        return np.unique(self.roots[np.isin(self.positions, as_index(positions))])

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        ok = self.roots < n
        return self.roots[ok], self.positions[ok]

    def __str__(self) -> str:
        return f"table of {len(self.positions)} positions"


@dataclass(frozen=True)
class Composed(IndexMap):
    """``first`` then ``second``."""

    first: IndexMap
    second: IndexMap

    def forward(self, roots: np.ndarray) -> np.ndarray:
        return self.second.forward(self.first.forward(roots))

    def inverse(self, positions: np.ndarray) -> np.ndarray:
        return self.first.inverse(self.second.inverse(positions))

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        r1, p1 = self.first.pairs(n)
        width = int(p1.max()) + 1 if len(p1) else 0
        r2, p2 = self.second.pairs(width)
        # Join on the intermediate position: root r1[k] -> p1[k] == r2[j] -> p2[j].
        order = np.argsort(r2, kind="stable")
        r2s, p2s = r2[order], p2[order]
        lo = np.searchsorted(r2s, p1, side="left")
        hi = np.searchsorted(r2s, p1, side="right")
        counts = hi - lo
        roots = np.repeat(r1, counts)
        idx = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)]) if len(lo) else np.zeros(0, _I64)
        return roots, p2s[idx.astype(_I64)]

    def __str__(self) -> str:
        return f"{self.first} then {self.second}"


def compress_map(positions: np.ndarray, roots: np.ndarray, size: int) -> IndexMap:
    """The simplest kind describing ``positions[k] -> roots[k]`` for a group of ``size`` roots.

    The analysis computes members as explicit tables; this gives back ``Identity``/``Offset``/``Block`` when
    the table has that form, so reports stay readable and maps stay cheap.
    """
    positions = np.asarray(positions, dtype=_I64)
    roots = np.asarray(roots, dtype=_I64)
    n = len(positions)
    if n == 0:
        return Table(positions, roots)
    start = int(positions[0])
    contiguous = int(positions[-1]) - start + 1 == n
    if contiguous:
        if np.array_equal(roots, np.arange(n, dtype=_I64)):
            return Identity() if start == 0 and n == size else Offset(start, n)
        n_roots = int(roots[-1]) + 1
        if n_roots == size and n % n_roots == 0:
            size = n // n_roots
            if np.array_equal(roots, np.repeat(np.arange(n_roots, dtype=_I64), size)):
                return Block(size, start)
    if np.array_equal(roots, np.arange(n, dtype=_I64)) and n > 1:
        steps = np.diff(positions)
        if np.all(steps == steps[0]):
            return Strided(start, int(steps[0]), n)
    return Table(positions, roots)


@dataclass(frozen=True)
class Coupling:
    """Positions of slot ``a`` are positions of slot ``b``: ``a[i] == b[map.forward([i])]``.

    ``role`` describes ``b`` when it is a constant: ``"source"`` (a weight's output axis: the layer that
    produces the channels), ``"sink"`` (a weight's input axis: the layer that absorbs a cut) or ``"param"``
    (bias, normalization parameters, broadcast constants). ``input_index`` is the node input ``b`` is read
    through, so criteria can tell a BatchNormalization scale from its bias.
    """

    a: ChannelAxis
    b: ChannelAxis
    map: IndexMap = field(default_factory=Identity)
    role: str = ""
    input_index: int = -1
