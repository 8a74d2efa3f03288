"""Calibration: run a model on sample data and keep streaming statistics of its intermediate tensors.

Why this module exists: every data-aware step of onnxprune (the ``activation``/``apoz``/``wanda``
criteria, bias compensation, least-squares re-fit, sensitivity) needs to know what values flow through
the graph on real inputs. Models and data sets can be far larger than memory, so nothing here ever
keeps activations: each batch is reduced at once into per-channel sums and, for the layers that will be
re-fitted, into the Gram matrix ``XᵀX`` of the layer's input in the layout of its weight (the im2col
patches for a Conv), accumulated in float64. Memory is bounded by the accumulators plus one batch,
whatever the number of samples.

Data is an ``.npz`` file (keys are the model's input names, the leading axis is the sample axis; other
keys such as ``labels`` are ignored) or any iterable of feed dicts (one batch each).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper

from onnxprune.core.errors import CalibrationError, ConfigError
from onnxprune.core.io import load_model
from onnxprune.core.ir import GraphIndex, attr, attr_ints, node_label, shape_skeleton
from onnxprune.core.progress import progress
from onnxprune.runtime.feeds import (
    InputSpec,
    check_finite,
    fixed_batch_size,
    input_specs,
    iter_batches,
    load_npz_feeds,
    num_samples,
)

log = logging.getLogger(__name__)

#: Ops whose input Gram matrix can be collected (the layers recovery re-fits).
GRAM_OPS = ("Conv", "Gemm", "MatMul")
#: Largest im2col chunk (elements) materialized at once while accumulating a Conv Gram matrix.
_CHUNK_ELEMS = 1 << 23


# -- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChannelStats:
    """Per-channel statistics of one tensor over the calibration set.

    Attributes:
        tensor: tensor name.
        axis: channel axis in the tensor (non-negative).
        channels: number of channels.
        count: number of values reduced into each channel (samples × other positions).
        samples: number of samples (leading-axis entries) seen.
        mean: mean value per channel, float64.
        mean_sq: mean of squares per channel.
        mean_abs: mean absolute value per channel.
        zero_frac: fraction of exact zeros per channel (APoZ after a ReLU).
    """

    tensor: str
    axis: int
    channels: int
    count: int
    samples: int
    mean: np.ndarray
    mean_sq: np.ndarray
    mean_abs: np.ndarray
    zero_frac: np.ndarray

    @property
    def l2(self) -> np.ndarray:
        """‖X_c‖₂ over every value of each channel: Wanda's activation norm."""
        return np.sqrt(self.mean_sq * self.count)

    @property
    def var(self) -> np.ndarray:
        """Population variance per channel (clipped at zero against round-off)."""
        return np.maximum(self.mean_sq - self.mean**2, 0.0)


@dataclass(frozen=True)
class GramStats:
    """Second moments of one layer's input, in the layout of the layer's weight.

    For a Gemm/MatMul the rows are the input vectors (every leading position), for a Conv the im2col
    patches, whose columns are ordered like ``W.reshape(O, C/group * kh * kw)`` of each group.

    Attributes:
        node: name of the layer (Conv, Gemm or MatMul).
        tensor: the layer's data input.
        kind: ``"conv"`` or ``"linear"``.
        groups: Conv ``group`` (1 for linear layers); ``gram`` and ``col_sum`` hold one block per group.
        gram: ``(groups, K, K)`` float64, ``Σ x xᵀ`` over all rows.
        col_sum: ``(groups, K)`` float64, ``Σ x`` over all rows (gives the column means, for biases).
        rows: number of rows reduced.
        kernel: Conv kernel shape (empty for linear layers).
        cross: ``(groups, K, K)`` ``Σ x r̂ᵀ`` of this input ``x`` against the same layer's input ``r`` in a
            reference model on the same samples (:func:`collect_paired_grams`), else ``None``. Re-fits and
            SparseGPT then aim at the reference layer's output ``R W`` instead of ``X W``.
    """

    node: str
    tensor: str
    kind: str
    groups: int
    gram: np.ndarray
    col_sum: np.ndarray
    rows: int
    kernel: tuple[int, ...] = ()
    cross: np.ndarray | None = None

    @property
    def col_mean(self) -> np.ndarray:
        """Column means ``(groups, K)``."""
        return self.col_sum / max(self.rows, 1)

    def channel_gram(self) -> np.ndarray:
        """The Gram matrix summed over kernel positions down to input channels, ``(groups, C, C)``.

        Only the diagonal is an exact statistic of the channels; it is what column-norm criteria use.
        """
        k = int(np.prod(self.kernel)) if self.kernel else 1
        g, n, _ = self.gram.shape
        c = n // k
        return self.gram.reshape(g, c, k, c, k).sum(axis=(2, 4))


@dataclass(frozen=True)
class ActivationStats:
    """Everything :func:`collect_stats` measured.

    Attributes:
        channels: tensor name → :class:`ChannelStats`.
        grams: layer name → :class:`GramStats`.
        samples: number of calibration samples used.
    """

    channels: dict[str, ChannelStats]
    grams: dict[str, GramStats]
    samples: int

    def __getitem__(self, tensor: str) -> ChannelStats:
        try:
            return self.channels[tensor]
        except KeyError:
            raise CalibrationError(
                f"no calibration statistics for tensor '{tensor}'; collect them with "
                f"collect_stats(..., tensors=['{tensor}'])"
            ) from None

    def gram(self, node: str) -> GramStats:
        """The Gram statistics of layer ``node``; CalibrationError when they were not collected."""
        try:
            return self.grams[node]
        except KeyError:
            raise CalibrationError(
                f"no Gram statistics for layer '{node}'; collect them with collect_stats(..., gram_for=['{node}'])"
            ) from None


# -- data ------------------------------------------------------------------------------------------
def _check_batch(specs: Sequence[InputSpec], feed: Mapping[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """Check one user-given feed dict (keys, dtypes, ranks, fixed dims) like ``load_npz_feeds`` does a file."""
    if not isinstance(feed, Mapping):
        raise CalibrationError(f"calibration batch {i} is a {type(feed).__name__}, expected a dict of arrays")
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in feed:
            raise CalibrationError(
                f"calibration batch {i} has no input '{spec.name}' (has {sorted(feed)}); "
                f"give every model input: {[s.name for s in specs]}"
            )
        arr = np.asarray(feed[spec.name])
        if arr.dtype != spec.dtype:
            raise CalibrationError(
                f"calibration batch {i}, '{spec.name}' has dtype {arr.dtype}, the model wants {spec.dtype}; "
                f"convert it with array.astype(numpy.{spec.dtype})"
            )
        check_finite(arr, f"calibration batch {i}, '{spec.name}'")
        if spec.shape is not None and (arr.ndim != len(spec.shape) or any(
                isinstance(d, int) and axis > 0 and arr.shape[axis] != d for axis, d in enumerate(spec.shape))):
            raise CalibrationError(
                f"calibration batch {i}, '{spec.name}' has shape {arr.shape}, the model wants {spec.describe()} "
                f"(the leading axis counts samples)"
            )
        out[spec.name] = arr
    return out


def _batch_samples(feed: Mapping[str, np.ndarray]) -> int:
    """Samples in a batch: the common leading dim, or the first input's when inputs differ (an input
    with a fixed leading dim, e.g. a lookup table, is not batched)."""
    try:
        return num_samples(feed)
    except CalibrationError:
        first = next(iter(feed.values()))
        return int(first.shape[0]) if first.ndim else 1


def iter_feeds(
    model: ModelProto,
    data: str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]],
    *,
    batch_size: int = 32,
    max_samples: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield checked feed dicts from an npz path or an iterable of feed dicts.

    Args:
        model: the model the feeds are for (its declared inputs are checked).
        data: ``.npz`` path (input names as keys, leading axis = samples; other keys ignored), or an
            iterable of feed dicts (each one batch).
        batch_size: samples per batch for npz data; a model exported with a fixed batch gets that batch.
        max_samples: stop after this many samples.

    Raises:
        CalibrationError: file missing/unreadable, an input key missing, mismatched sample counts,
            wrong dtype or shape.
        ConfigError: ``batch_size`` or ``max_samples`` below 1.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be >= 1, got {max_samples}")
    specs = input_specs(model)
    if isinstance(data, (str, os.PathLike)):
        feeds = load_npz_feeds(data, model)
        batches: Iterable[Mapping[str, np.ndarray]] = iter_batches(feeds, fixed_batch_size(specs) or batch_size)
    elif isinstance(data, Mapping):
        raise CalibrationError(
            "calibration data is a single dict; pass a list of feed dicts (one per batch) or an .npz path"
        )
    else:
        batches = data
    seen = 0
    for i, feed in enumerate(batches):
        out = _check_batch(specs, feed, i)
        n = _batch_samples(out)
        if max_samples is not None and seen + n > max_samples:
            full = n
            n = max_samples - seen
            out = {k: (v[:n] if v.ndim and v.shape[0] == full else v) for k, v in out.items()}
        seen += n
        yield out
        if max_samples is not None and seen >= max_samples:
            return


def count_samples(data: str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]],
                  max_samples: int | None = None) -> int | None:
    """Number of samples in an npz (reading only headers), for progress bars; None if unknown."""
    if not isinstance(data, (str, os.PathLike)):
        return None
    try:
        with np.load(Path(data), allow_pickle=False) as archive:  # a .npy fails here: load_npz_feeds says why
            for key in archive.files:
                with archive.zip.open(key + ".npy") as fh:
                    version = np.lib.format.read_magic(fh)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape = read(fh)[0]
                n = int(shape[0]) if shape else 0
                return n if max_samples is None else min(n, max_samples)
    except (OSError, ValueError, EOFError, AttributeError, KeyError, TypeError):
        return None
    return None


# -- running the model -----------------------------------------------------------------------------
def tensor_types(model: ModelProto) -> dict[str, int]:
    """ONNX element type of every tensor we can infer (inputs, intermediates, outputs, initializers)."""
    types: dict[str, int] = {}
    skel = shape_skeleton(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(skel, strict_mode=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        inferred = skel
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = int(vi.type.tensor_type.elem_type)
    for t in model.graph.initializer:
        types[t.name] = int(t.data_type)
    return types


def with_outputs(model: ModelProto, tensors: Sequence[str]) -> ModelProto:
    """A copy of ``model`` whose graph also outputs ``tensors`` (typed; stale value_info removed).

    Raises:
        ConfigError: a tensor is not produced by any node nor a graph input.
    """
    out = ModelProto()
    out.CopyFrom(model)
    idx = GraphIndex(out)
    existing = {o.name for o in out.graph.output}
    wanted = [t for t in dict.fromkeys(tensors) if t not in existing]
    if not wanted:
        return out
    known = set(idx.producer) | set(idx.graph_inputs)
    for t in wanted:
        if t not in known:
            raise ConfigError(
                f"tensor '{t}' is not computed by the model (no node writes it and it is not an input); "
                f"check the name with 'onnxprune analyze'"
            )
    types = tensor_types(model)
    keep_vi = [vi for vi in out.graph.value_info if vi.name not in set(wanted)]
    del out.graph.value_info[:]
    out.graph.value_info.extend(keep_vi)
    for t in wanted:
        elem = types.get(t, TensorProto.FLOAT)
        out.graph.output.append(helper.make_tensor_value_info(t, elem, None))
    return out


# -- accumulators ----------------------------------------------------------------------------------
def default_axis(rank: int) -> int:
    """Channel axis by rank: 1 for NCHW and [N, C] (and any rank ≥ 4), last for [B, T, D], 0 for 1-D."""
    if rank <= 1:
        return 0
    if rank == 3:
        return 2
    return 1


class _ChannelAcc:
    def __init__(self, tensor: str, axis: int | None) -> None:
        self.tensor = tensor
        self.axis_req = axis
        self.axis: int | None = None
        self.sum: np.ndarray | None = None
        self.sum_sq: np.ndarray | None = None
        self.sum_abs: np.ndarray | None = None
        self.zeros: np.ndarray | None = None
        self.count = 0
        self.samples = 0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.ndim == 0:
            x = x.reshape(1)
        axis = default_axis(x.ndim) if self.axis_req is None else self.axis_req
        if axis < 0:
            axis += x.ndim
        if not 0 <= axis < x.ndim:
            raise ConfigError(
                f"channel axis {self.axis_req} is out of range for tensor '{self.tensor}' of rank {x.ndim}"
            )
        if self.axis is None:
            self.axis = axis
            c = x.shape[axis]
            self.sum = np.zeros(c)
            self.sum_sq = np.zeros(c)
            self.sum_abs = np.zeros(c)
            self.zeros = np.zeros(c, dtype=np.int64)
        assert self.sum is not None and self.sum_sq is not None and self.sum_abs is not None
        assert self.zeros is not None
        if x.shape[axis] != self.sum.shape[0]:
            raise CalibrationError(
                f"tensor '{self.tensor}' has {x.shape[axis]} channels on axis {axis} in one batch and "
                f"{self.sum.shape[0]} in another; give a fixed channel axis"
            )
        flat = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
        if flat.dtype.kind != "f":
            flat = flat.astype(np.float64)
        self.sum += flat.sum(axis=0, dtype=np.float64)
        self.sum_sq += np.einsum("ij,ij->j", flat, flat, dtype=np.float64)
        self.sum_abs += np.abs(flat).sum(axis=0, dtype=np.float64)
        self.zeros += (flat == 0).sum(axis=0)
        self.count += flat.shape[0]
        self.samples += x.shape[0] if x.ndim > 1 else 1

    def result(self) -> ChannelStats:
        if self.axis is None or self.sum is None:
            raise CalibrationError("no calibration batch was run; the data holds no samples")
        assert self.sum_sq is not None and self.sum_abs is not None and self.zeros is not None
        n = max(self.count, 1)
        return ChannelStats(
            tensor=self.tensor, axis=self.axis, channels=int(self.sum.shape[0]), count=self.count,
            samples=self.samples, mean=self.sum / n, mean_sq=self.sum_sq / n, mean_abs=self.sum_abs / n,
            zero_frac=self.zeros / n,
        )


@dataclass(frozen=True)
class ConvGeometry:
    """The attributes of a Conv that decide its im2col patches."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...] | None  # begins then ends; None when auto_pad decides from the input size
    auto_pad: str
    groups: int

    @classmethod
    def of(cls, node: NodeProto, weight_shape: Sequence[int], opset: int) -> ConvGeometry:
        """Read a Conv node's geometry (schema defaults included)."""
        kernel = tuple(attr_ints(node, "kernel_shape", opset) or [int(k) for k in weight_shape[2:]])
        nd = len(kernel)
        strides = tuple(attr_ints(node, "strides", opset) or [1] * nd)
        dilations = tuple(attr_ints(node, "dilations", opset) or [1] * nd)
        auto_pad = attr(node, "auto_pad", opset, "NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        pads_attr = attr_ints(node, "pads", opset)
        pads = tuple(pads_attr) if pads_attr else None
        if auto_pad in ("NOTSET", "") and pads is None:
            pads = (0,) * (2 * nd)
        if auto_pad == "VALID":
            pads = (0,) * (2 * nd)
        return cls(kernel, strides, dilations, pads, auto_pad or "NOTSET", int(attr(node, "group", opset, 1)))  # type: ignore[call-overload]

    def resolve_pads(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Explicit pads for an input of ``spatial`` size (SAME_UPPER/SAME_LOWER computed)."""
        if self.pads is not None and self.auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
            return self.pads
        begins, ends = [], []
        for size, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations, strict=True):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begins.append(big if self.auto_pad == "SAME_LOWER" else small)
            ends.append(small if self.auto_pad == "SAME_LOWER" else big)
        return tuple(begins + ends)


def im2col(x: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """Patches of ``x`` (N, C, *spatial) as rows ``(N * out_positions, groups, C/groups * prod(kernel))``.

    Built with stride tricks on the padded input, so only the returned array is materialized. Column
    order matches ``W.reshape(O, C/groups * prod(kernel))`` within each group.

    Example:
        >>> g = ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "NOTSET", 1)
        >>> im2col(np.zeros((2, 4, 5, 5), np.float32), g).shape
        (50, 1, 36)
    """
    nd = len(geom.kernel)
    n, c = x.shape[:2]
    pads = geom.resolve_pads(x.shape[2:])
    if any(pads):
        width = [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)]
        x = np.pad(x, width)
    span = tuple((k - 1) * d + 1 for k, d in zip(geom.kernel, geom.dilations, strict=True))
    win = np.lib.stride_tricks.sliding_window_view(x, span, axis=tuple(range(2, 2 + nd)))
    # win: (N, C, *out_full, *span); pick strided output positions and dilated kernel taps.
    sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in geom.strides) + tuple(
        slice(None, None, d) for d in geom.dilations)
    win = win[sl]
    out_shape = win.shape[2:2 + nd]
    # → (N, *out, C, *kernel)
    order = (0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
    patches = win.transpose(order)
    rows = n * int(np.prod(out_shape))
    k = int(np.prod(geom.kernel))
    return patches.reshape(rows, geom.groups, (c // geom.groups) * k)


class _GramAcc:
    def __init__(self, node: NodeProto, idx: GraphIndex, key: str) -> None:
        self.node = node
        self.name = key
        self.opset = idx.opset
        op = node.op_type
        self.tensor = node.input[0]
        self.geom: ConvGeometry | None = None
        self.trans_a = False
        if op == "Conv":
            wshape = idx.const_shape(node.input[1])
            if wshape is None:
                raise ConfigError(f"layer {node_label(node)} has a non-constant weight; its Gram cannot be collected")
            self.geom = ConvGeometry.of(node, wshape, idx.opset)
            self.kind = "conv"
        elif op == "Gemm":
            self.trans_a = bool(attr(node, "transA", idx.opset, 0))
            self.kind = "linear"
        elif op == "MatMul":
            self.kind = "linear"
        else:
            raise ConfigError(
                f"gram_for names {node_label(node)}; Gram statistics exist only for {', '.join(GRAM_OPS)} layers"
            )
        self.gram: np.ndarray | None = None
        self.col_sum: np.ndarray | None = None
        self.cross: np.ndarray | None = None
        self.rows = 0

    def _row_chunks(self, x: np.ndarray) -> Iterator[np.ndarray]:
        """The layer's input as ``(rows, groups, K)`` chunks (im2col patches for a Conv, a few samples at once)."""
        if self.kind == "conv":
            assert self.geom is not None
            n = x.shape[0]
            per_sample = max(int(np.prod(x.shape[1:])) * int(np.prod(self.geom.kernel)), 1)
            step = max(1, _CHUNK_ELEMS // per_sample)
            for start in range(0, n, step):
                yield im2col(x[start:start + step], self.geom)
        else:
            if self.trans_a:
                x = x.T
            yield x.reshape(-1, 1, x.shape[-1])

    def add(self, x: np.ndarray) -> None:
        for rows in self._row_chunks(x):
            self._add_rows(rows)

    def add_paired(self, x: np.ndarray, reference: np.ndarray) -> None:
        """Add ``x`` and the cross term ``Σ x rᵀ`` against the reference model's input on the same samples."""
        if reference.shape != x.shape:
            raise CalibrationError(f"layer '{self.name}': input shape {x.shape} differs from the reference "
                                   f"model's {reference.shape}")
        for rows, ref in zip(self._row_chunks(x), self._row_chunks(reference), strict=True):
            self._add_rows(rows)
            if self.cross is None:
                self.cross = np.zeros((rows.shape[1], rows.shape[2], rows.shape[2]))
            for gi in range(rows.shape[1]):
                self.cross[gi] += np.ascontiguousarray(rows[:, gi, :], dtype=np.float64).T @ np.ascontiguousarray(
                    ref[:, gi, :], dtype=np.float64)

    def _add_rows(self, rows: np.ndarray) -> None:
        r, g, k = rows.shape
        if self.gram is None:
            self.gram = np.zeros((g, k, k))
            self.col_sum = np.zeros((g, k))
        assert self.gram is not None and self.col_sum is not None
        if self.gram.shape[1] != k:
            raise CalibrationError(
                f"layer '{self.name}' input width changed between batches ({self.gram.shape[1]} vs {k})"
            )
        blocks = np.ascontiguousarray(rows.transpose(1, 0, 2), dtype=np.float64)  # (g, r, k): one matmul, all groups
        self.gram += np.matmul(blocks.transpose(0, 2, 1), blocks)
        self.col_sum += blocks.sum(axis=1)
        self.rows += r

    def result(self) -> GramStats:
        if self.gram is None or self.col_sum is None:
            raise CalibrationError("no calibration batch was run; the data holds no samples")
        return GramStats(
            node=self.name, tensor=self.tensor, kind=self.kind, groups=self.gram.shape[0], gram=self.gram,
            col_sum=self.col_sum, rows=self.rows, kernel=self.geom.kernel if self.geom else (), cross=self.cross,
        )


def weight_rows(node: NodeProto, w: np.ndarray, opset: int) -> np.ndarray:
    """A layer's weight as ``(groups, outputs per group, K)`` rows, columns in :class:`GramStats` order.

    Conv ``(O, C/g, *k)`` → ``(g, O/g, C/g·prod(k))``; Gemm ``transB=1`` ``(N, K)`` and ``transB=0``
    ``(K, N)`` → ``(1, N, K)``; 2-D MatMul ``(K, N)`` → ``(1, N, K)``. The result is a new array.

    Raises:
        ConfigError: an op or weight rank without such a layout (batched MatMul weights).
    """
    op = node.op_type
    if op == "Conv":
        g = int(attr(node, "group", opset, 1))  # type: ignore[call-overload]
        return np.array(w.reshape(g, w.shape[0] // g, -1))
    if op == "Gemm":
        return np.array((w if attr(node, "transB", opset, 0) else w.T)[None])
    if op in ("MatMul", "Attention") and w.ndim == 2:  # Attention: its packed Q/K/V projection [K, 3N]
        return np.array(w.T[None])
    raise ConfigError(f"layer {node_label(node)} with a weight of shape {w.shape} has no row layout to re-fit")


def rows_to_weight(node: NodeProto, rows: np.ndarray, shape: Sequence[int], opset: int) -> np.ndarray:
    """Inverse of :func:`weight_rows` for a weight of ``shape`` (input columns may have been cut)."""
    op = node.op_type
    if op == "Conv":
        return rows.reshape(tuple(shape))
    if op == "Gemm" and attr(node, "transB", opset, 0):
        return rows[0].reshape(tuple(shape))
    return np.ascontiguousarray(rows[0].T).reshape(tuple(shape))


def resolve_layer(idx: GraphIndex, name: str) -> tuple[str, NodeProto]:
    """``(key, node)`` of the Conv/Gemm/MatMul named ``name`` or, failing that, of the only such layer
    reading tensor ``name``; ``key`` is the node's name (``<op_type>_<index>`` for an unnamed node).

    Raises:
        ConfigError: no such layer, or a tensor read by several layers (name the layer instead).
    """
    node = idx.nodes_by_name.get(name)
    if node is not None and node.op_type in GRAM_OPS:
        return name, node
    readers = [n for n in idx.consumers.get(name, []) if n.op_type in GRAM_OPS and n.input[0] == name]
    if len(readers) == 1:
        key = next(k for k, n in idx.nodes_by_name.items() if n is readers[0])
        return key, readers[0]
    if len(readers) > 1:
        names = [n.name for n in readers]
        raise ConfigError(f"tensor '{name}' feeds several layers {names}; name the layer in gram_for instead")
    raise ConfigError(
        f"gram_for names '{name}', which is neither a Conv/Gemm/MatMul node nor the data input of one; "
        f"list layers with 'onnxprune analyze'"
    )


# -- entry point -----------------------------------------------------------------------------------
def collect_stats(
    model: str | os.PathLike[str] | ModelProto,
    data: str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]],
    *,
    tensors: Sequence[str] | Mapping[str, int | None] = (),
    batch_size: int = 32,
    gram_for: Sequence[str] = (),
    max_samples: int | None = None,
    provider: str = "cpu",
    threads: int | None = None,
    gram_samples: int | None = None,
) -> ActivationStats:
    """Run ``model`` on ``data`` and reduce the listed tensors into streaming per-channel statistics.

    The model is copied and the wanted intermediate tensors are added as (typed) graph outputs, so the
    caller's model is untouched. Each batch is reduced at once and dropped.

    Args:
        model: path or ``ModelProto``.
        data: ``.npz`` path (keys = input names, leading axis = samples) or iterable of feed dicts.
        tensors: tensor names, or a mapping name → channel axis (``None`` = by rank: 1 for 4-D NCHW and
            2-D ``[N, C]``, last for 3-D ``[B, T, D]``).
        batch_size: samples per onnxruntime run (npz data only).
        gram_for: layers (Conv/Gemm/MatMul node names, or the tensor a single such layer reads) whose
            input Gram matrix ``XᵀX`` to accumulate in float64 (im2col patches for Conv).
        max_samples: use at most this many samples.
        provider: onnxruntime execution provider (short name, default ``cpu``).
        threads: onnxruntime intra-op threads (default: one per core).
        gram_samples: accumulate the Grams only on the batches that start before this many samples (``None``:
            every batch; channel statistics always see every sample). Why: a Gram costs ``rows × K²``, far
            more than the pass, and a Gram that only ranks cuts needs fewer samples than one a re-fit solves
            with. ``0`` collects no Gram at all (a shard past the first samples).

    Returns:
        :class:`ActivationStats` with ``channels[tensor]`` and ``grams[layer]`` (a Gram that saw no batch,
        with ``gram_samples=0``, is absent).

    Raises:
        CalibrationError: bad data (missing input key, wrong dtype or shape, no samples).
        ConfigError: unknown tensor or layer, bad option.

    Example:
        >>> stats = collect_stats("cnn.onnx", "calib.npz", tensors=["relu1"], gram_for=["conv2"])  # doctest: +SKIP
        >>> stats["relu1"].zero_frac  # doctest: +SKIP
    """
    from onnxprune.runtime.session import create_session, run_session

    m = load_model(model, check=False) if not isinstance(model, ModelProto) else model
    idx = GraphIndex(m)
    axes: dict[str, int | None] = dict(tensors) if isinstance(tensors, Mapping) else dict.fromkeys(tensors)
    layers = dict(resolve_layer(idx, name) for name in dict.fromkeys(gram_for))
    gram_accs = [_GramAcc(node, idx, key) for key, node in layers.items()]
    fetch = list(dict.fromkeys([*axes, *(g.tensor for g in gram_accs)]))
    session = create_session(with_outputs(m, fetch) if fetch else m, provider=provider, threads=threads)
    chan_accs = {t: _ChannelAcc(t, ax) for t, ax in axes.items()}
    samples = 0
    total = count_samples(data, max_samples)
    batches = iter_feeds(m, data, batch_size=batch_size, max_samples=max_samples)
    for feed in progress(batches, desc="calibrating", total=math.ceil(total / batch_size) if total else None):
        values = run_session(session, feed, outputs=fetch, label="the calibration model") if fetch else {}
        for t, value in values.items():  # finite inputs can still overflow inside the model
            check_finite(np.asarray(value), f"activation '{t}' on the calibration data (--calib)")
        for t, acc in chan_accs.items():
            acc.add(values[t])
        if gram_samples is None or samples < gram_samples:
            for g in gram_accs:
                g.add(values[g.tensor])
        samples += _batch_samples(feed)
    if samples == 0:
        raise CalibrationError("calibration data holds no samples; pass at least one batch")
    log.debug("calibrated on %d samples: %d tensors, %d Gram matrices", samples, len(chan_accs), len(gram_accs))
    return ActivationStats(
        channels={t: a.result() for t, a in chan_accs.items()},
        grams={g.name: g.result() for g in gram_accs if g.rows or gram_samples != 0},
        samples=samples,
    )


def collect_paired_grams(
    reference: ModelProto,
    model: ModelProto,
    data: str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]],
    *,
    layers: Sequence[str],
    tensors: Mapping[str, int | None] | None = None,
    batch_size: int = 32,
    max_samples: int | None = None,
    provider: str = "cpu",
) -> ActivationStats:
    """Gram matrices of ``model``'s layer inputs plus their cross term with ``reference``'s, on the same samples.

    Why: sequential calibration measures a layer on the model already pruned before it (``X̃``); with the cross
    term ``X̃ᵀX`` against the dense model's input ``X`` a re-fit can aim at the dense layer's output ``X W``,
    so it also repairs what the layers before it lost. Both models must have the same layer names and input
    tensors (weights may differ). Two onnxruntime sessions, one pass over the data.

    Args:
        reference: the dense model.
        model: the partly pruned model whose layers are measured.
        data: as for :func:`collect_stats`.
        layers: the Conv/Gemm/MatMul layers to measure.
        tensors: channel statistics of ``model`` to collect on the way (tensor → axis).
        batch_size, max_samples, provider: calibration runs.

    Returns:
        :class:`ActivationStats` of ``model`` whose ``grams`` carry ``cross``.
    """
    from onnxprune.runtime.session import create_session, run_session

    idx = GraphIndex(model)
    accs = [_GramAcc(node, idx, key) for key, node in dict(resolve_layer(idx, n) for n in layers).items()]
    axes = dict(tensors or {})
    fetch = list(dict.fromkeys([*axes, *(g.tensor for g in accs)]))
    ref_fetch = list(dict.fromkeys(g.tensor for g in accs))
    session = create_session(with_outputs(model, fetch), provider=provider)
    ref_session = create_session(with_outputs(reference, ref_fetch), provider=provider)
    chan_accs = {t: _ChannelAcc(t, ax) for t, ax in axes.items()}
    samples = 0
    for feed in iter_feeds(model, data, batch_size=batch_size, max_samples=max_samples):
        values = run_session(session, feed, outputs=fetch, label="the calibration model")
        ref_values = run_session(ref_session, feed, outputs=ref_fetch, label="the reference model")
        for t, value in (*values.items(), *ref_values.items()):
            check_finite(np.asarray(value), f"activation '{t}' on the calibration data (--calib)")
        for t, acc in chan_accs.items():
            acc.add(values[t])
        for g in accs:
            g.add_paired(values[g.tensor], ref_values[g.tensor])
        samples += _batch_samples(feed)
    if samples == 0:
        raise CalibrationError("calibration data holds no samples; pass at least one batch")
    return ActivationStats(channels={t: a.result() for t, a in chan_accs.items()},
                           grams={g.name: g.result() for g in accs}, samples=samples)
