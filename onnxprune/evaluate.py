"""Classification accuracy of an ONNX model on a labelled ``.npz`` data set, measured in onnxruntime.

Why this module exists: "the outputs barely changed" is not what a user cares about after pruning; the
accuracy on real held-out data is. This module measures top-1 (and top-5 when there are at least five
classes) with onnxruntime alone, so the same number can be reproduced without the training framework, and
refuses malformed data (missing key, wrong shape, labels out of range) with one clear
:class:`CalibrationError` before running anything long.

The data file holds one array per model input, keyed by the input's name, plus an integer label array
(key ``labels`` by default). The first axis of every array is the sample axis.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from zipfile import BadZipFile

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper

from onnxprune.errors import CalibrationError, ConfigError, ModelLoadError
from onnxprune.io import PROTOBUF_LIMIT, load_model, model_nbytes

log = logging.getLogger(__name__)

#: Classes needed before top-5 means anything (with fewer, top-5 is always 100%).
TOP5_MIN_CLASSES = 5

DataLike = "str | os.PathLike[str] | Mapping[str, np.ndarray]"


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one model on one data set.

    Attributes:
        top1: fraction of samples whose highest-scoring class is the label, in [0, 1].
        top5: fraction whose label is among the five highest scores; ``None`` when the model has fewer than
            five classes (not a failure: the metric does not apply).
        n: number of samples evaluated.
        num_classes: size of the class axis of the scored output.
        output: name of the model output that was scored.
    """

    top1: float
    top5: float | None
    n: int
    num_classes: int = 0
    output: str = ""

    def as_dict(self) -> dict[str, object]:
        """Plain dictionary for JSON reports."""
        return {"top1": self.top1, "top5": self.top5, "n": self.n, "num_classes": self.num_classes,
                "output": self.output}


def load_data(data: str | os.PathLike[str] | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Read an ``.npz`` file (or copy a mapping) into a dictionary of arrays.

    Raises:
        CalibrationError: the file is missing, not an ``.npz`` archive, or holds object arrays.
    """
    if isinstance(data, Mapping):
        return {str(k): np.asarray(v) for k, v in data.items()}
    if not isinstance(data, (str, os.PathLike)):
        raise CalibrationError(f"expected an .npz path or a mapping of arrays, got {type(data).__name__}")
    path = Path(data)
    if not path.is_file():
        raise CalibrationError(f"data file {path} does not exist; pass an .npz written by numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise CalibrationError(
                    f"data file {path} holds a single array, not named arrays; "
                    f"save it with numpy.savez(path, <input name>=x, labels=y)"
                )
            return {k: archive[k] for k in archive.files}
    except (BadZipFile, OSError, EOFError) as exc:
        raise CalibrationError(f"data file {path} is not a readable .npz archive ({exc}); re-create it "
                               f"with numpy.savez") from exc
    except ValueError as exc:
        raise CalibrationError(f"data file {path} holds object arrays, which are not loaded for safety; "
                               f"save plain numeric arrays") from exc


def _elem_dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _declared(vi: onnx.ValueInfoProto) -> tuple[int, tuple[int | str | None, ...] | None]:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return int(tt.elem_type), None
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None))
    return int(tt.elem_type), tuple(dims)


def _pick_output(model: ModelProto, output: str | None) -> str:
    """The output to score: the named one, else the first float output of rank 2 ([N, classes])."""
    names = [o.name for o in model.graph.output]
    if output is not None:
        if output not in names:
            raise ConfigError(f"output '{output}' is not an output of the model; choose one of {names} "
                              f"(--output)")
        return output
    for vi in model.graph.output:
        elem, shape = _declared(vi)
        if elem in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE) and (
            shape is None or len(shape) == 2
        ):
            return vi.name
    raise ConfigError(f"no output of the model looks like class scores (a float [N, classes] tensor) among "
                      f"{names}; name the scores output with --output")


def _check_inputs(model: ModelProto, arrays: dict[str, np.ndarray], labels_key: str
                  ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, int | None]]:
    """Validate and cast the data; returns feeds, integer labels and each input's fixed batch size."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    missing = [vi.name for vi in inputs if vi.name not in arrays]
    if missing:
        raise CalibrationError(f"data has no array for model input(s) {missing}; it has keys {sorted(arrays)} "
                               f"(save each input under its name)")
    if labels_key not in arrays:
        raise CalibrationError(f"data has no label array '{labels_key}'; it has keys {sorted(arrays)} "
                               f"(pass the right key with --labels)")
    labels = np.asarray(arrays[labels_key])
    if labels.ndim != 1:
        raise CalibrationError(f"labels '{labels_key}' must be 1-D class indices, got shape {labels.shape}")
    if labels.size == 0:
        raise CalibrationError(f"labels '{labels_key}' is empty; the data set needs at least one sample")
    if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise CalibrationError(f"labels '{labels_key}' must hold integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise CalibrationError(f"labels '{labels_key}' has negative class index {int(labels.min())}; "
                               f"labels must be 0..classes-1")
    n = labels.shape[0]
    feeds: dict[str, np.ndarray] = {}
    fixed_batch: dict[str, int | None] = {}
    for vi in inputs:
        elem, shape = _declared(vi)
        x = np.asarray(arrays[vi.name])
        if x.ndim == 0 or x.shape[0] != n:
            raise CalibrationError(f"input '{vi.name}' has {x.shape[0] if x.ndim else 0} samples (shape "
                                   f"{x.shape}) but labels '{labels_key}' has {n}; both need one row per sample")
        if shape is not None:
            if x.ndim != len(shape):
                raise CalibrationError(f"input '{vi.name}' has shape {x.shape} but the model expects rank "
                                       f"{len(shape)} {list(shape)}; reshape the data")
            for axis, (have, want) in enumerate(zip(x.shape[1:], shape[1:], strict=True), start=1):
                if isinstance(want, int) and have != want:
                    raise CalibrationError(f"input '{vi.name}' has shape {x.shape} but the model expects "
                                           f"{list(shape)} (axis {axis}: {have} != {want}); reshape the data")
            fixed_batch[vi.name] = shape[0] if shape and isinstance(shape[0], int) else None
        else:
            fixed_batch[vi.name] = None
        want_dtype = _elem_dtype(elem)
        if x.dtype != want_dtype:
            if x.dtype.kind != want_dtype.kind and not (x.dtype.kind in "iu" and want_dtype.kind in "iu"):
                raise CalibrationError(f"input '{vi.name}' has dtype {x.dtype} but the model expects "
                                       f"{want_dtype}; convert the data")
            x = x.astype(want_dtype)
        feeds[vi.name] = x
    return feeds, labels, fixed_batch


def _session(model: ModelProto, source: object) -> object:
    """An onnxruntime CPU session (imported lazily so the package import stays light)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    what: str | bytes
    if isinstance(source, (str, os.PathLike)):
        what = os.fspath(source)
    elif model_nbytes(model) < PROTOBUF_LIMIT:
        what = model.SerializeToString()
    else:
        raise ConfigError("model is over 2 GB in memory; save it with external data and pass the path")
    try:
        return ort.InferenceSession(what, opts, providers=["CPUExecutionProvider"])
    except _ort_errors() as exc:
        raise ModelLoadError(f"onnxruntime cannot load the model ({str(exc).splitlines()[0]}); "
                             f"check it with 'onnxprune validate'") from exc


def _ort_errors() -> tuple[type[BaseException], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(getattr(state, n) for n in ("Fail", "InvalidArgument", "RuntimeException", "InvalidGraph",
                                             "NoSuchFile", "InvalidProtobuf", "NotImplemented"))


def evaluate_accuracy(
    model: str | os.PathLike[str] | ModelProto,
    data: str | os.PathLike[str] | Mapping[str, np.ndarray],
    *,
    labels: str = "labels",
    output: str | None = None,
    batch_size: int = 256,
) -> EvalResult:
    """Top-1 and top-5 accuracy of a classifier on labelled data, run in onnxruntime.

    Args:
        model: path to an ``.onnx`` file or a ``ModelProto`` (not modified).
        data: ``.npz`` path or mapping with one array per model input (keyed by input name) and labels.
        labels: key of the integer label array in ``data``.
        output: model output holding class scores; default the first float output of rank 2.
        batch_size: samples per onnxruntime call; a model with a fixed batch dimension uses that instead.

    Returns:
        An :class:`EvalResult`; ``top5`` is ``None`` when the model has fewer than five classes.

    Raises:
        CalibrationError: the data is missing a key, has the wrong shape or dtype, or labels are out of range.
        ConfigError: ``batch_size`` below 1, or ``output`` is not a model output.
        ModelLoadError: the model cannot be read or onnxruntime cannot load it.

    Example:
        >>> r = evaluate_accuracy("models/digits_cnn.onnx", "models/digits_test.npz")  # doctest: +SKIP
        >>> print(f"{r.top1:.2%}")  # doctest: +SKIP
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r} (--batch)")
    proto = load_model(model)
    out_name = _pick_output(proto, output)
    feeds, y, fixed = _check_inputs(proto, load_data(data), labels)
    fixed_sizes = sorted({b for b in fixed.values() if b is not None})
    if len(fixed_sizes) > 1:
        raise CalibrationError(f"model inputs have different fixed batch sizes {fixed}; cannot batch the data")
    step = fixed_sizes[0] if fixed_sizes else batch_size
    n = int(y.shape[0])
    if fixed_sizes and n % step:
        raise CalibrationError(f"model has a fixed batch size of {step} but the data has {n} samples; "
                               f"use a multiple of {step} samples or export the model with a dynamic batch")
    sess = _session(proto, None if isinstance(model, ModelProto) else model)
    top1_hits = 0
    top5_hits = 0
    classes = 0
    errors = _ort_errors()
    for start in range(0, n, step):
        batch = {k: v[start:start + step] for k, v in feeds.items()}
        try:
            (scores,) = sess.run([out_name], batch)  # type: ignore[attr-defined]
        except errors as exc:
            raise CalibrationError(f"onnxruntime rejected the data at samples {start}..{start + step - 1} "
                                   f"({str(exc).splitlines()[0]}); check the input shapes") from exc
        scores = np.asarray(scores)
        batch_labels = y[start:start + step]
        if scores.ndim != 2 or scores.shape[0] != batch_labels.shape[0]:
            raise ConfigError(f"output '{out_name}' has shape {scores.shape} for a batch of {batch_labels.shape[0]}; "
                              f"it must be [batch, classes] scores (choose another with --output)")
        if not classes:
            classes = int(scores.shape[1])
            if int(y.max()) >= classes:
                bad = int(np.argmax(y >= classes))
                raise CalibrationError(f"label {int(y[bad])} at sample {bad} is out of range for output "
                                       f"'{out_name}' with {classes} classes; labels must be 0..{classes - 1}")
        # Stable descending order, so ties resolve to the lower class index as argmax does.
        order = np.argsort(-scores, axis=1, kind="stable")
        top1_hits += int(np.sum(order[:, 0] == batch_labels))
        if classes >= TOP5_MIN_CLASSES:
            top5_hits += int(np.sum(np.any(order[:, :5] == batch_labels[:, None], axis=1)))
    result = EvalResult(
        top1=top1_hits / n,
        top5=top5_hits / n if classes >= TOP5_MIN_CLASSES else None,
        n=n,
        num_classes=classes,
        output=out_name,
    )
    log.debug("accuracy on %d samples: %s", n, result)
    return result
