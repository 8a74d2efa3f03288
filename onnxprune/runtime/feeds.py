"""Model inputs: describe them, generate them from a seed, load them from ``.npz``, cut them in batches.

Why this module exists: validation, benchmarks, calibration and evaluation all feed models, and must agree
on which shape a dynamic dimension takes and on what an ``.npz`` file must hold, so that "the same
inputs" really are the same everywhere. It never imports onnxruntime.

Conventions (documented for users in the CLI help):

* **Samples axis.** In an ``.npz`` file every array is keyed by the input's name and its leading axis
  counts samples; the array has the input's rank, so axis 0 is both the sample axis and the model's
  batch axis. Batches are cut along axis 0.
* **Dynamic dims of generated inputs.** A dynamic *first* dim is batch-like: it takes ``batch``
  (``--batch``) when one is given, else its value in ``dims`` if named there, else 1. Any other dynamic
  dim takes its value from ``dims``: ``--dim name=value`` by the dim's name wherever it appears, or
  ``--dim input:axis=value`` for one axis (see :func:`onnxprune.core.ir.lookup_dim`). One without a value
  is an error naming the axis: guessing 1 there would break a model whose spatial or sequence size must be
  larger, with a cryptic onnxruntime error. :mod:`onnxprune.runtime.dims` chooses values that the model
  accepts when the user gave none.
* **Generated values.** Float inputs: standard normal. Integer inputs: uniform in ``[0, int_high)``
  (default 8, small enough for most embedding tables). Bool inputs: fair coin. All from
  ``numpy.random.default_rng(seed)``, so a seed reproduces the inputs exactly.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, helper

from onnxprune.core.errors import CalibrationError, ConfigError, ModelLoadError
from onnxprune.core.ir import dim_key, lookup_dim, shape_of_type

log = logging.getLogger(__name__)

Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """One real graph input: its name, numpy dtype and declared shape (str/None for dynamic dims)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...] | None

    @property
    def rank(self) -> int | None:
        """Number of axes, or ``None`` when the shape is not declared at all."""
        return None if self.shape is None else len(self.shape)

    @property
    def fixed_batch(self) -> int | None:
        """The first dim when it is a fixed number (a model exported for one batch size), else None."""
        if self.shape and isinstance(self.shape[0], int):
            return int(self.shape[0])
        return None

    def describe(self) -> str:
        """``x: float32[N, 3, 224, 224]`` for messages."""
        dims = "?" if self.shape is None else ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def _as_model(model: str | os.PathLike[str] | ModelProto) -> ModelProto:
    """The model's graph signature; a path is read without its (possibly huge) external data."""
    if isinstance(model, ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file; check the path")
    try:
        return onnx.load_model(str(path), load_external_data=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: not a readable ONNX model ({exc}); re-export it") from exc


def input_specs(model: str | os.PathLike[str] | ModelProto) -> list[InputSpec]:
    """The model's real inputs (initializers excluded), in graph order.

    Raises:
        CalibrationError: an input that is not a tensor (sequence, map) or has no element type.
    """
    proto = _as_model(model)
    inits = {t.name for t in proto.graph.initializer}
    specs: list[InputSpec] = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        if not vi.type.HasField("tensor_type") or vi.type.tensor_type.elem_type == 0:
            raise CalibrationError(
                f"input '{vi.name}' is not a typed tensor; onnxprune can only feed tensor inputs"
            )
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        specs.append(InputSpec(vi.name, dtype, shape_of_type(vi.type)))
    return specs


def concrete_shape(spec: InputSpec, *, batch: int | None = None,
                   dims: Mapping[str, int] | None = None) -> tuple[int, ...]:
    """The shape generated inputs take (see the module doc for the rules).

    Raises:
        ConfigError: the shape is undeclared, or a dynamic dim other than the first has no value.
    """
    dims = dims or {}
    if spec.shape is None:
        raise ConfigError(
            f"input '{spec.name}' declares no shape, so inputs cannot be generated; "
            f"pass real inputs with --data inputs.npz"
        )
    out: list[int] = []
    for axis, d in enumerate(spec.shape):
        value = None if isinstance(d, int) else lookup_dim(dims, spec.name, axis, d)
        if isinstance(d, int):
            out.append(d)
        elif axis == 0 and batch is not None:
            out.append(int(batch))
        elif value is not None:
            out.append(value)
        elif axis == 0:
            out.append(1)
        else:
            raise ConfigError(
                f"input '{spec.name}' axis {axis} is dynamic ('{d or '?'}') and has no value; "
                f"pass --dim {dim_key(spec.name, axis)}=VALUE"
            )
    return tuple(out)


def _random_array(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...], int_high: int) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        return rng.integers(0, int_high, size=shape).astype(dtype)
    raise ConfigError(f"cannot generate inputs of dtype {dtype}; pass real inputs with --data inputs.npz")


def fixed_batch_size(specs: Sequence[InputSpec]) -> int | None:
    """The batch a model was exported for (its inputs' fixed first dim), or None when it is dynamic.

    Raises:
        CalibrationError: inputs with different fixed first dims (they cannot be batched together).
    """
    fixed = {s.fixed_batch for s in specs if s.rank and s.fixed_batch is not None}
    if len(fixed) > 1:
        raise CalibrationError(f"inputs have different fixed batch sizes {sorted(fixed)}; cannot batch them")
    return fixed.pop() if fixed else None


def random_feeds(
    model: str | os.PathLike[str] | ModelProto,
    *,
    seed: int,
    batch: int | None = None,
    dims: Mapping[str, int] | None = None,
    int_high: int = 8,
) -> dict[str, np.ndarray]:
    """Seeded random inputs for every real input of ``model``.

    Args:
        model: a path or a ``ModelProto``.
        seed: the generator seed; the same seed gives the same arrays.
        batch: value of a dynamic first dim (ignored where the first dim is fixed); ``None`` takes the
            dim's value from ``dims`` if named there, else 1.
        dims: values of named dynamic dims (the first dim too, unless ``batch`` is given).
        int_high: integer inputs are drawn from ``[0, int_high)``.

    Returns:
        ``{input name: array}`` in graph order.

    Raises:
        ConfigError: a dynamic dim without a value (see the module doc), or a bad ``batch``.

    Example:
        >>> feeds = random_feeds("model.onnx", seed=0, batch=8, dims={"seq": 128})  # doctest: +SKIP
    """
    if batch is not None and batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}; pass --batch 1 or more")
    rng = np.random.default_rng(seed)
    proto = _as_model(model)
    bounds = index_bounds(proto)
    return {
        spec.name: _random_array(rng, spec.dtype, concrete_shape(spec, batch=batch, dims=dims),
                                 min(int_high, bounds.get(spec.name, int_high)))
        for spec in input_specs(proto)
    }


#: Ops an integer input may pass through unchanged in value before it indexes a table.
_VALUE_PRESERVING = ("Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten")


def index_bounds(model: ModelProto) -> dict[str, int]:
    """For integer inputs used as indices into a constant table, the table's size along the indexed axis.

    Why: generated token ids must be valid ones. A text model's ``token_type_ids`` index a table of 2 rows;
    drawing them from ``[0, 8)`` makes onnxruntime fail with an out-of-range Gather, which looks like a model
    that cannot run at all. Followed through value-preserving ops (Cast, Identity, reshapes) to ``Gather``'s
    indices input; the smallest table wins. A quantized table (an integer constant behind DequantizeLinear, a
    QDQ model's embeddings) is sized by its integer storage.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tables = {t.name: list(t.dims) for t in model.graph.initializer}
    tables.update({n.output[0]: tables[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and n.input and n.output and n.input[0] in tables})
    bounds: dict[str, int] = {}
    for vi in model.graph.input:
        if vi.name in tables or vi.type.tensor_type.elem_type not in _INTEGER_TYPES:
            continue
        todo, seen = [vi.name], {vi.name}
        while todo:
            name = todo.pop()
            for node in consumers.get(name, []):
                if node.op_type in _VALUE_PRESERVING and node.input and node.input[0] == name:
                    for out in node.output:
                        if out not in seen:
                            seen.add(out)
                            todo.append(out)
                elif (node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name) or (
                        (node.domain, node.op_type) == ("com.microsoft", "EmbedLayerNormalization")
                        and name in node.input[:2]):
                    # EmbedLayerNormalization looks input_ids up in input 2, segment_ids in input 4
                    table = node.input[0] if node.op_type == "Gather" else \
                        node.input[2 if node.input[0] == name else 4] if len(node.input) > 4 else ""
                    dims = tables.get(table)
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if dims and -len(dims) <= axis < len(dims) and dims[axis] > 0:
                        bounds[vi.name] = min(bounds.get(vi.name, dims[axis]), int(dims[axis]))
    return bounds


_INTEGER_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
                  onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64)


def load_npz_feeds(path: str | os.PathLike[str], model: str | os.PathLike[str] | ModelProto, *,
                   what: str = "input data") -> dict[str, np.ndarray]:
    """Load inputs from an ``.npz`` file and check them against the model's inputs.

    Keys are input names; every array's leading axis counts samples (see the module doc). Keys that are
    not inputs (labels, say) are left out with a log message, so one file can serve evaluation too.

    Args:
        path: the ``.npz`` file.
        model: the model the inputs are for (path or ``ModelProto``).
        what: how messages name the data (``"calibration data (--calib)"``).

    Returns:
        ``{input name: array}`` in the model's input order.

    Raises:
        CalibrationError: the file is missing or unreadable, an input is missing, or an array's dtype,
            rank, fixed dims or sample count does not fit.

    Example:
        >>> feeds = load_npz_feeds("inputs.npz", "model.onnx")  # doctest: +SKIP
    """
    p = Path(path)
    arrays = read_npz(p, what=what)
    return check_feeds(arrays, input_specs(model), where=f"{what} {p}")


def read_npz(path: str | os.PathLike[str], *, what: str = "data", example: str = "input_name=array"
             ) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, or one clear :class:`CalibrationError` saying what is wrong.

    Why one reader: calibration, validation and evaluation data all come as ``.npz``, and a plain ``.npy``
    (what ``numpy.save`` writes) loads as a bare array without names, which used to end in a TypeError.

    Args:
        path: the file.
        what: how messages name it (``"input data"``, ``"calibration data"``).
        example: the keyword arguments of the ``numpy.savez`` call the fix suggests.

    Raises:
        CalibrationError: missing, a ``.npy``, not a readable ``.npz``.
    """
    p = Path(path)
    fix = f"write it with numpy.savez(path, {example}) (one array per model input, keyed by the input's name)"
    if not p.is_file():
        raise CalibrationError(f"{what} {p}: no such file; pass an .npz, {fix}")
    try:
        loaded = np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(
            f"{what} {p}: not a readable .npz ({str(exc).splitlines()[0] if str(exc) else exc}); {fix}"
        ) from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise CalibrationError(
            f"{what} {p} is a .npy file (one array of shape {np.shape(loaded)}, without input names), not an "
            f".npz; {fix}"
        )
    try:
        with loaded:
            return {k: np.asarray(loaded[k]) for k in loaded.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(
            f"{what} {p}: not a readable .npz ({str(exc).splitlines()[0] if str(exc) else exc}); {fix}"
        ) from exc


def check_feeds(arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], *, where: str) -> dict[str, np.ndarray]:
    """Check arrays against the model's inputs: one per input, its dtype, rank, fixed and named dims.

    One checker for every source of inputs (an ``.npz`` file, arrays in memory), so they cannot drift
    apart. Keys that are not inputs (labels, say) are left out with a log message.

    Args:
        arrays: ``{input name: array}``, leading axis = samples.
        specs: the model's inputs (:func:`input_specs`).
        where: how messages name the data, e.g. ``"input data inputs.npz"``.

    Returns:
        ``{input name: array}`` in the model's input order.

    Raises:
        CalibrationError: an input is missing, an array holds NaN or infinity, or an array's dtype, rank,
            fixed dims or sample count does not fit.
    """
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise CalibrationError(
            f"{where} lacks model input(s) {missing} (it has {sorted(arrays)}); "
            f"save one array per input, keyed by the input's name"
        )
    extra = sorted(set(arrays) - {s.name for s in specs})
    if extra:
        log.info("%s: ignoring keys that are not model inputs: %s", where, extra)
    feeds: dict[str, np.ndarray] = {}
    named: dict[str, tuple[int, str]] = {}
    for spec in specs:
        arr = np.asarray(arrays[spec.name])
        at = f"{where}, '{spec.name}'"
        if arr.dtype != spec.dtype:
            raise CalibrationError(
                f"{at} has dtype {arr.dtype}, the model wants {spec.dtype}; "
                f"convert it with array.astype(numpy.{spec.dtype})"
            )
        check_finite(arr, at)
        if spec.shape is not None:
            if arr.ndim != len(spec.shape) or arr.ndim == 0:
                raise CalibrationError(
                    f"{at} has shape {arr.shape}, the model wants {spec.describe()} "
                    f"(the leading axis counts samples, so the rank must match and be at least 1)"
                )
            for axis, d in enumerate(spec.shape):
                if axis > 0 and isinstance(d, int) and arr.shape[axis] != d:
                    raise CalibrationError(
                        f"{at} has shape {arr.shape}: size {arr.shape[axis]} on axis {axis}, the model wants {d} "
                        f"({spec.describe()})"
                    )
                if axis > 0 and isinstance(d, str):
                    seen = named.setdefault(d, (int(arr.shape[axis]), spec.name))
                    if seen[0] != arr.shape[axis]:
                        raise CalibrationError(
                            f"{at}: dim '{d}' is {arr.shape[axis]} on axis {axis} but {seen[0]} in "
                            f"'{seen[1]}'; the same named dim must have one size"
                        )
        elif arr.ndim == 0:
            raise CalibrationError(f"{at} is a scalar; the leading axis must count samples")
        feeds[spec.name] = arr
    num_samples(feeds)
    return feeds


def check_finite(arr: np.ndarray, where: str) -> None:
    """Refuse floating-point data holding NaN or infinity.

    Why: calibration statistics, least-squares re-fits, accuracy and drift computed from such data are NaN
    or meaningless (an all-NaN calibration set used to give a model of NaN weights, and a drift of NaN
    outputs compared equal to themselves), so the data is refused before any work.

    Raises:
        CalibrationError: naming the data, the count and the fix.
    """
    if arr.dtype.kind not in "fc":
        return
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise CalibrationError(
            f"{where} holds {bad} NaN or infinite value(s) of {arr.size}; onnxprune needs finite data: drop "
            f"those samples or replace the values (e.g. numpy.nan_to_num) and save the file again"
        )


def num_samples(feeds: Mapping[str, np.ndarray]) -> int:
    """The common length of axis 0 of all arrays.

    Raises:
        CalibrationError: no arrays, a scalar, or arrays with different sample counts.
    """
    if not feeds:
        raise CalibrationError("no inputs given")
    counts = {}
    for name, arr in feeds.items():
        if np.ndim(arr) == 0:
            raise CalibrationError(f"input '{name}' is a scalar; the leading axis must count samples")
        counts[name] = int(np.shape(arr)[0])
    if len(set(counts.values())) != 1:
        raise CalibrationError(
            f"inputs have different sample counts on axis 0 ({counts}); give every input the same count"
        )
    return next(iter(counts.values()))


def check_batch_size(batch_size: object) -> int:
    """``batch_size`` itself when it is a positive integer (``bool`` is not), else a ``ConfigError``
    naming the flag; the evaluations that run data through a model in batches share it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r} (--batch-size)")
    return batch_size


def iter_batches(feeds: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{name: array[i:i + batch_size]}`` along axis 0; the last batch may be smaller.

    Raises:
        ConfigError: ``batch_size`` below 1.
        CalibrationError: inputs with different sample counts.

    Example:
        >>> [b["x"].shape for b in iter_batches({"x": np.zeros((5, 2))}, 2)]
        [(2, 2), (2, 2), (1, 2)]
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}; pass --batch 1 or more")
    n = num_samples(feeds)
    for start in range(0, n, batch_size):
        yield {k: v[start : start + batch_size] for k, v in feeds.items()}
