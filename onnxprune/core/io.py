"""Loading and saving models without ever losing or corrupting one.

Why this module exists: users run onnxprune inside deployment pipelines on models that took weeks to train.
Loading must turn every kind of bad file into one clear :class:`ModelLoadError`; saving must be atomic
(a temporary file in the target folder, then ``os.replace``) so that a crash, a full disk or Ctrl-C never
leaves half a model behind, and must never modify the caller's ``ModelProto`` or the input files.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import secrets
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from google.protobuf.message import DecodeError, Message
from onnx import GraphProto, ModelProto, TensorProto, numpy_helper

from onnxprune.core.contrib_shapes import retag_default_domain
from onnxprune.core.densify import densify_sparse_initializers
from onnxprune.core.errors import ModelLoadError, OutputError, UnsupportedModelError, first_line
from onnxprune.core.formats import export_hint
from onnxprune.core.ir import copy_fields
from onnxprune.core.node_order import in_order, sort_nodes

log = logging.getLogger(__name__)

#: Protobuf cannot serialize messages of 2 GiB or more; switch to external data well before that.
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_SWITCH_BYTES = 1_800_000_000
#: Tensors smaller than this stay inline when saving with external data (shape constants, biases).
EXTERNAL_MIN_BYTES = 1024
MIN_OPSET = 7

ModelLike = "str | os.PathLike[str] | ModelProto"


def _default_opset(model: ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def check_opset(model: ModelProto, where: str = "model") -> int:
    """Return the default-domain opset, refusing ones onnxprune cannot handle.

    Raises:
        UnsupportedModelError: opset below 7 or newer than the installed onnx understands.
    """
    opset = _default_opset(model)
    if opset is None:
        # A graph of custom-domain ops only: nothing onnxprune can prune structurally, but legal.
        return onnx.defs.onnx_opset_version()
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"{where} uses opset {opset}, older than the oldest supported ({MIN_OPSET}); "
            f"upgrade it first, e.g. onnx.version_converter.convert_version(model, 13)"
        )
    if opset > newest:
        raise UnsupportedModelError(
            f"{where} uses opset {opset}, newer than the installed onnx supports ({newest}); "
            f"upgrade onnx (pip install -U onnx)"
        )
    return opset


def external_data_files(model: ModelProto) -> list[str]:
    """Relative locations of the external data files a (not yet loaded) model refers to."""
    locations: list[str] = []
    for tensor in _all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in locations:
                    locations.append(entry.value)
    return locations


def _all_tensors(model: ModelProto) -> list[TensorProto]:
    """Initializers plus Constant-node tensors of the main graph and every subgraph."""
    return list(onnx.external_data_helper._get_all_tensors(model))


def _check_external_files(model: ModelProto, base: Path, where: str) -> None:
    """Refuse bad external data before onnx reads it (it would raise cryptically, or read a wrong size).

    Checks each external tensor's location (relative, inside the model's folder, present), its offset and
    length (integers, within the file) and that the length matches the tensor's shape and type.
    """
    root = base.resolve()
    for tensor in _all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        path = (base / location).resolve()
        if location and (Path(location).is_absolute() or not path.is_relative_to(root)):
            raise ModelLoadError(
                f"{where}: external data location '{location}' of tensor '{tensor.name}' points outside the "
                f"model's folder; onnx only reads data files beside the model, move the file there"
            )
        if not location or not path.is_file():
            raise ModelLoadError(
                f"{where}: external data file '{location}' of tensor '{tensor.name}' is missing; "
                f"keep the data file next to the model (looked in {base})"
            )
        try:
            offset = int(info.get("offset", 0))
            length = int(info.get("length", 0)) if "length" in info else None
        except ValueError as exc:
            raise ModelLoadError(
                f"{where}: external data offset/length of tensor '{tensor.name}' are not integers "
                f"({info.get('offset')!r}, {info.get('length')!r}); re-export the model"
            ) from exc
        expected = _expected_nbytes(tensor)
        if length is not None and expected is not None and length != expected:
            raise ModelLoadError(
                f"{where}: tensor '{tensor.name}' has shape {list(tensor.dims)} ({expected} bytes) but its "
                f"external data length is {length}; the model and its data file do not match, re-export it"
            )
        if offset < 0 or (length is not None and length < 0):
            raise ModelLoadError(
                f"{where}: tensor '{tensor.name}' has a negative external data offset or length "
                f"({offset}, {length}); re-export the model"
            )
        needed = length if length is not None else (expected or 0)
        size = path.stat().st_size
        if offset + needed > size:
            raise ModelLoadError(
                f"{where}: external data file '{location}' is truncated (tensor '{tensor.name}' needs "
                f"bytes {offset}..{offset + needed}, file has {size}); copy it again"
            )


def _expected_nbytes(tensor: TensorProto) -> int | None:
    """Bytes a tensor's raw data must have, from its shape and type (None for strings and sub-byte types)."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None
    if tensor.data_type in (TensorProto.STRING, TensorProto.UNDEFINED) or tensor.data_type >= TensorProto.UINT4:
        return None
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize if len(tensor.dims) else itemsize


def load_model(source: str | os.PathLike[str] | ModelProto, *, check: bool = True, copy: bool = True,
               weights: bool = True) -> ModelProto:
    """Load a model from a path (external data included) or copy a ``ModelProto``.

    The caller's object is never modified: a ``ModelProto`` argument is deep-copied, unless ``copy=False`` (and
    even then when it must change: sparse initializers to densify, or nodes to sort when checked).

    Args:
        source: a path to an ``.onnx`` file, or a ``ModelProto``.
        check: run ``onnx.checker`` and the opset check.
        copy: ``False`` returns a ``ModelProto`` argument itself (checked if asked), for callers that only
            read it: a deep copy costs one more model of memory, which matters above a few hundred MB.
        weights: ``False`` leaves a path's external data on disk (its files are still checked: present,
            large enough, lengths matching shapes): for callers that need only the graph and hand the path
            itself to onnxruntime, so a big model's weights are never read into memory.

    Returns:
        A new ``ModelProto`` with all weights in memory (external ones left on disk with ``weights=False``),
        sparse initializers turned into the dense initializers they stand for (bit-exact), so every
        command counts, checks and prunes them like any other weight.

    Raises:
        ModelLoadError: the file is missing, a directory, empty, not ONNX, truncated, or fails the checker.
        UnsupportedModelError: the opset is too old or too new.

    Example:
        >>> model = load_model("models/digits_cnn.onnx")  # doctest: +SKIP
    """
    if isinstance(source, ModelProto):
        # densifying and sorting must not change the caller's model
        if copy or len(source.graph.sparse_initializer) or (check and not in_order(source.graph)):
            model = ModelProto()
            model.CopyFrom(source)
            densify_sparse_initializers(model)
        else:
            model = source
        where = f"model '{model.graph.name or '<in memory>'}'"
        if check:
            _check_model(model, where, path=None)
        return model
    if not isinstance(source, (str, os.PathLike)):
        raise ModelLoadError(f"expected a path or an onnx.ModelProto, got {type(source).__name__}")
    path = Path(source)
    where = str(path)
    if not path.exists():
        raise ModelLoadError(f"{where}: no such file; check the path")
    if path.is_dir():
        raise ModelLoadError(export_hint(path) or f"{where}: is a directory, not an ONNX file; pass the .onnx "
                                                  f"file inside it")
    try:
        size = path.stat().st_size
        if size == 0:
            raise ModelLoadError(f"{where}: file is empty; re-export the model")
        model = onnx.load_model(str(path), load_external_data=False)
    except ModelLoadError:
        raise
    except (DecodeError, RuntimeError, ValueError, TypeError) as exc:
        raise ModelLoadError(
            export_hint(path) or f"{where}: not a readable ONNX model ({type(exc).__name__}: {first_line(exc)}); "
                                 f"the file may be truncated or of another format, re-export it"
        ) from exc
    except OSError as exc:
        raise ModelLoadError(f"{where}: cannot read ({exc.strerror or exc}); check permissions") from exc
    if not model.HasField("graph") or model.ir_version == 0:
        raise ModelLoadError(
            export_hint(path) or f"{where}: parses as protobuf but is not an ONNX model (no graph or ir_version); "
                                 f"pass the exported .onnx file"
        )
    _check_external_files(model, path.parent, where)
    densify_sparse_initializers(model)  # read sparse weights as the dense tensors they stand for
    if not weights:
        if check:
            _check_model(model, where, path=path, external_checked=True)
        return model
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelLoadError(f"{where}: cannot read external data ({first_line(exc)})") from exc
    if check:
        _check_model(model, where, path=path)
    return model


def load_structure(path: str | os.PathLike[str]) -> ModelProto:
    """A model file's graph without its initializers' external data, not checked: for a file that is run
    from its path (onnxruntime maps the weights) and whose weights are read one at a time, if at all.

    Main-graph ``Constant`` nodes get their values even when :func:`save_model` put them in external data:
    shape inference and constant lookups read them, and they are small (shape pieces, the odd bias).

    Raises:
        ModelLoadError: as :func:`load_model`.
    """
    model = load_model(path, check=False, weights=False)
    base = os.fspath(Path(path).parent)
    for node in model.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for a in node.attribute:
            if a.name == "value" and a.HasField("t") and a.t.data_location == TensorProto.EXTERNAL:
                try:
                    onnx.external_data_helper.load_external_data_for_tensor(a.t, base)
                except (OSError, ValueError) as exc:
                    raise ModelLoadError(f"{path}: cannot read external data ({first_line(exc)})") from exc
                a.t.data_location = TensorProto.DEFAULT
                del a.t.external_data[:]
    return model


def _check_model(model: ModelProto, where: str, path: Path | None, *, external_checked: bool = False) -> None:
    check_opset(model, where)
    if sort_nodes(model.graph):  # onnxruntime runs a graph out of order; the checker and onnxprune do not
        log.info("%s: nodes were out of topological order and have been sorted (nothing they compute changes)",
                 where)
    view = _checker_view(model, where, external_checked=external_checked)
    try:
        if view.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(view)
        elif path is not None:
            onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ModelLoadError(
            f"{where}: fails onnx.checker ({first_line(exc)}); fix the exporter output first"
        ) from exc


def checker_view(model: ModelProto, where: str, *, external_checked: bool = False) -> ModelProto:
    """Public name of :func:`_checker_view` (used by validation's full check).

    Raises:
        ModelLoadError: a large initializer's raw data does not fit its shape.
    """
    return _checker_view(model, where, external_checked=external_checked)


def _checker_view(model: ModelProto, where: str, *, external_checked: bool = False) -> ModelProto:
    """A copy of ``model`` for ``onnx.checker`` in which large weights are typed graph inputs.

    Why: the checker serializes the model and parses it again in C++, which costs two more copies of every
    weight (three models in memory at once). Weight values do not matter to what it checks, so large
    main-graph initializers become inputs of the same type and shape, and their one value check the
    checker would do (raw data size against shape) is done here without copying the data. With
    ``external_checked`` (a model loaded without its external data, whose files ``_check_external_files``
    has checked), external weights become typed inputs too.
    """
    view = ModelProto()
    copy_fields(view, model, skip=("graph",))
    copy_fields(view.graph, model.graph, skip=("initializer",))
    retag_default_domain(view)  # onnxruntime's default-domain fused norms, which onnx does not know
    declared = {i.name for i in model.graph.input}
    for tensor in model.graph.initializer:
        external = tensor.data_location == TensorProto.EXTERNAL
        if (not external_checked) if external else tensor.ByteSize() < EXTERNAL_MIN_BYTES:
            view.graph.initializer.append(tensor)
            continue
        if not external:
            _check_raw_size(tensor, where)
        if tensor.name not in declared:
            view.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                                       list(tensor.dims)))
    if external_checked:
        _external_constants_as_inputs(view.graph)
    return view


def _external_constants_as_inputs(graph: GraphProto) -> None:
    """Turn main-graph Constant nodes whose value lives in external data into typed graph inputs.

    Why: the checker resolves an external location against the model's folder, which an in-memory view does
    not have, so it fails on them ("... should be stored in X.data, but it is not regular file"); their files
    were checked by ``_check_external_files`` already, and like large initializers their values do not matter
    to what the checker checks. :func:`save_model` writes large Constant values to external data itself.
    """
    for i in reversed(range(len(graph.node))):
        node = graph.node[i]
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if value is None or value.data_location != TensorProto.EXTERNAL:
            continue
        graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], value.data_type, list(value.dims)))
        del graph.node[i]


def _check_raw_size(tensor: TensorProto, where: str) -> None:
    """Refuse a tensor whose raw data does not fit its shape, measuring sizes without copying the bytes."""
    if tensor.data_type == TensorProto.UNDEFINED:
        raise ModelLoadError(
            f"{where}: fails onnx.checker (tensor '{tensor.name}' has an UNDEFINED data type); "
            f"fix the exporter output first"
        )
    expected = _expected_nbytes(tensor)
    if expected is None or not tensor.HasField("raw_data"):
        return
    stub = TensorProto()
    copy_fields(stub, tensor, skip=("raw_data",))
    field = tensor.ByteSize() - stub.ByteSize()  # tag + length varint + payload of raw_data
    if field != 1 + len(_varint(expected)) + expected:
        raise ModelLoadError(
            f"{where}: fails onnx.checker (raw data of tensor '{tensor.name}' does not match its shape "
            f"{list(tensor.dims)} of {expected} bytes); fix the exporter output first"
        )


def model_nbytes(model: ModelProto) -> int:
    """Approximate serialized size, without serializing (which fails above 2 GiB)."""
    total = 0
    for tensor in _all_tensors(model):
        total += tensor.ByteSize()
    total += sum(node.ByteSize() for node in model.graph.node if node.op_type != "Constant")
    # Sparse initializers (onnxprune.sparse.storage) are not in _all_tensors and always stay inline.
    total += sum(sparse.ByteSize() for sparse in model.graph.sparse_initializer)
    return total


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        return None


def release_memory() -> None:
    """Hand the heap's free memory back to the operating system (glibc's ``malloc_trim``; elsewhere a no-op).

    Why: glibc serves blocks below its mmap threshold, which rises to 32 MB as big blocks are freed, from
    the heap and keeps them there once freed. Dropping a model of few-MB tensors or an onnxruntime session
    then leaves the process as big as before, and the next one piles on top. Call it after dropping one.
    Measured (tools/bench_large.py --size-gb 0.1 --width 1024: 24 tensors of 4 MB), validated unstructured
    prune: peak growth 3.02x the model's size without it, 2.14x with it.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def data_files(path: str | os.PathLike[str]) -> list[Path]:
    """The external data files a saved model reads (those present), from one parse of the model file."""
    path = Path(path)
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError):
        return []
    return [f for f in (path.parent / loc for loc in external_data_files(model)) if f.is_file()]


def file_size(path: str | os.PathLike[str], *, data: list[Path] | None = None) -> int:
    """Size of a model on disk, its external data files included (``data``: from :func:`data_files`)."""
    path = Path(path)
    files = data_files(path) if data is None else data
    return path.stat().st_size + sum(f.stat().st_size for f in files)


#: The path that means "standard output" for reports, plans and plots.
STDOUT = "-"


def output_kind(path: str | os.PathLike[str]) -> str:
    """How an output path must be written: ``"stdout"``, ``"stream"`` or ``"file"``.

    Why: atomic replace renames a temporary file over the target, which is right for a regular file and
    wrong for anything else: renaming over ``/dev/stdout`` (a link to ``/proc/self/fd/1``) or ``/dev/null``
    replaces the link or device itself with a regular file, which as root breaks the system. So:

    * ``"-"`` is standard output (``"stdout"``);
    * an existing target that is not a regular file (device, fifo, socket, or a link to one), and any path
      whose links pass through ``/proc`` (``/dev/stdout``, ``/dev/fd/N``: whatever the shell opened, which
      may be a regular file opened for appending) is a ``"stream"``: written through, never replaced;
    * everything else (a regular file, a link to one, a new name) is a ``"file"``, replaced atomically;
      a link is followed, so the link stays and the file it names is replaced.
    """
    if str(path) == STDOUT:
        return "stdout"
    hop = Path(path)
    for _ in range(40):  # the kernel's own limit on links followed
        if not hop.is_symlink():
            break
        if hop.is_absolute() and hop.parts[1:2] == ("proc",):  # /proc/self/fd/1 itself
            return "stream"
        hop = hop.parent / os.readlink(hop)
        if hop.is_absolute() and hop.parts[1:2] == ("proc",):  # /dev/stdout -> /proc/self/fd/1
            return "stream"
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "file"  # missing (or a dangling link): a new regular file
    return "file" if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "stream"


def names_stdout(path: str | os.PathLike[str]) -> bool:
    """True when writing to ``path`` writes to this process's standard output (``-``, ``/dev/stdout``, ...)."""
    kind = output_kind(path)
    if kind == "stdout":
        return True
    if kind != "stream":
        return False
    try:
        target, out = os.stat(path), os.fstat(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (target.st_dev, target.st_ino) == (out.st_dev, out.st_ino)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, what: str = "") -> Path:
    """Write a text file (report, plan) through a temporary file and ``os.replace``.

    ``"-"`` writes to standard output, and a target that is not a regular file (``/dev/stdout``, a fifo,
    ``/dev/null``) is written through, never replaced: see :func:`output_kind`.

    Args:
        path: target file.
        text: its content.
        what: what the file is, for the error (``"plan"`` gives "cannot write plan ...").

    Raises:
        OutputError: the folder is missing or not writable, or the disk is full.
    """
    if str(path) == STDOUT:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as exc:
            raise OutputError(f"cannot write {what or 'output'} to standard output ({exc})") from exc
        return Path(STDOUT)
    return write_bytes_atomic(path, text.encode(), what=what)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, what: str = "") -> Path:
    """Write a file (report, plan, image) whole or not at all; streams are written through.

    A regular file (or a new name) gets a temporary file beside it and ``os.replace``; a link to a regular
    file replaces the file it names and keeps the link; ``"-"`` is standard output; any other existing
    target (device, fifo, ``/dev/stdout``) is opened for appending and written in one call, never replaced
    (see :func:`output_kind`).

    Raises:
        OutputError: the folder is missing or not writable, or the disk is full.
    """
    label = f"{what} {path}" if what else str(path)
    kind = output_kind(path)
    if kind == "stdout":
        try:
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise
        except (AttributeError, OSError, ValueError) as exc:
            raise OutputError(f"cannot write {what or 'output'} to standard output ({exc})") from exc
        return Path(STDOUT)
    if kind == "stream":
        try:
            with open(path, "ab") as fh:
                fh.write(data)
        except OSError as exc:
            raise OutputError(f"cannot write {label} ({exc.strerror or exc}); choose another path") from exc
        return Path(path)
    out = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    tmp = out.with_name(f".{out.name}.onnxprune-tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {label} ({exc.strerror or exc}); create the folder or choose "
                          f"another path") from exc
    return Path(path)


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when two paths name the same file (resolving links); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_output_path(path: str | os.PathLike[str], *, inputs: tuple[str | os.PathLike[str], ...] = (),
                      stream: bool = False) -> Path:
    """Refuse an output path before any work is done.

    Args:
        path: the target.
        inputs: input files it must not be (nor one of their external data files).
        stream: whether the output may be a stream (``"-"``, ``/dev/stdout``, a fifo: reports, plans,
            plots). Models never may: a model is written whole or not at all, with its data file beside
            it, which only a regular file allows.

    Raises:
        OutputError: the path is an input, its folder is missing or not writable, it is a directory, or it
            is not a regular file where a stream is not allowed.
    """
    kind = output_kind(path)
    if kind != "file":
        if not stream:
            what = "standard output" if kind == "stdout" else "not a regular file"
            raise OutputError(
                f"output path {path} is {what}; models are written atomically to regular files only, so "
                f"name a file (e.g. -o pruned.onnx)"
            )
        if kind == "stream" and not os.access(path, os.W_OK):
            raise OutputError(f"output {path} is not writable; choose another output path")
        return Path(path)
    out = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    for src in inputs:
        if same_file(out, src):
            raise OutputError(f"output path {out} is the input model; choose another output file (-o)")
        data_outs = [out.with_name(name) for name in data_file_names(out)]
        for used in (Path(src), *_input_data_files(Path(src))):
            if same_file(out, used) or any(same_file(data_out, used) for data_out in data_outs):
                raise OutputError(
                    f"output path {out} would overwrite {used}, which the input model {src} reads; "
                    f"choose another output file (-o)"
                )
    if out.is_dir():
        raise OutputError(f"output path {out} is a directory; name a file such as {out / 'model.onnx'}")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist; create it first (mkdir -p {folder})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable; choose another output path")
    if out.exists() and not os.access(out, os.W_OK):
        raise OutputError(f"output file {out} exists and is not writable; choose another output path")
    try:  # permissions can say yes where the file system says no (read-only mounts, ACLs, /sys)
        fd, probe = tempfile.mkstemp(prefix=".onnxprune-probe-", dir=folder)
    except OSError as exc:
        raise OutputError(f"output folder {folder} is not writable ({exc.strerror or exc}); "
                          f"choose another output path") from exc
    os.close(fd)
    os.unlink(probe)
    return out


def _input_data_files(path: Path) -> list[Path]:
    """External data files an input model reads (none if it cannot be parsed: loading will say why)."""
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError, TypeError):
        return []
    return [path.parent / location for location in external_data_files(model)]


def save_model(
    model: ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    replace: Callable[[TensorProto], TensorProto] | None = None,
) -> Path:
    """Write a model atomically; the ``model`` object is left exactly as it was.

    Everything is first written into a temporary folder beside the target, then moved into place with
    ``os.replace`` (data file first, model file last), so readers never see a half-written model. When
    overwriting a model with external data, the new data file takes the other of the two names of
    :func:`data_file_names`, so old model and old data stay a matching pair until the model file is
    replaced; the old data file is removed after that. A crash at any point leaves a matching pair (at
    worst with one unused ``.data`` file beside it).

    Args:
        model: the model to save.
        path: target ``.onnx`` path.
        external_data: ``True`` writes weights to ``<name>.data`` beside the model, ``False`` keeps them
            inline, ``None`` (default) switches to external data when the model would exceed 2 GB.
        replace: called with each main-graph initializer as it is written; what it returns (same name,
            a new tensor) is written instead. Why: a variant of a big model (the zeroed reference of
            :mod:`onnxprune.structured.oracle`) can then be written one tensor at a time and never exist whole in
            memory. Inline tensors may be passed twice (sizes first), so it must be a pure function.

    Returns:
        The path written.

    Raises:
        OutputError: the folder is missing or not writable, or the disk is full.
    """
    out = check_output_path(path)
    if external_data is None:
        external_data = model_nbytes(model) >= EXTERNAL_SWITCH_BYTES
    folder = out.parent if str(out.parent) else Path(".")
    old_data = _own_data_files(out)  # before the temporary folder exists: nothing to clean up if it fails
    # The name is chosen before the folder exists and the folder is made inside the try, so that a Ctrl-C
    # arriving just after the mkdir still finds the finally that removes it (tempfile.mkdtemp would create it
    # before returning, outside any try).
    tmpdir = folder / f".onnxprune-tmp-{secrets.token_hex(6)}"
    try:
        try:
            tmpdir.mkdir(mode=0o700)
        except OSError as exc:
            raise OutputError(f"cannot write in {folder} ({exc.strerror or exc}); choose another output path") \
                from exc
        tmp_model = tmpdir / out.name
        data_name = _free_data_name(out, old_data)
        tmp_data = tmpdir / data_name
        wrote_data = _write_model(model, tmp_model, tmp_data if external_data else None, data_name, replace)
        if wrote_data:
            os.replace(tmp_data, folder / data_name)  # a name the existing model does not read
        os.replace(tmp_model, out)  # the switch: before it the old pair is whole, after it the new one
    except OSError as exc:
        raise OutputError(
            f"cannot write {out} ({exc.strerror or exc}); free disk space or choose another output path"
        ) from exc
    finally:
        _remove_temporary_folder(tmpdir)
    for stale in old_data:  # the replaced model's data file, now read by nothing
        with contextlib.suppress(OSError):
            stale.unlink()
    return out


def _remove_temporary_folder(tmpdir: Path) -> None:
    """Remove a save's temporary folder, even when Ctrl-C strikes during the removal itself.

    Why: the removal runs in a ``finally`` that a KeyboardInterrupt may be unwinding already, or that a SIGINT
    may interrupt; either way the folder must go. An interrupt here finishes the removal first, then is raised.
    """
    interrupted: KeyboardInterrupt | None = None
    for _ in range(3):
        try:
            for leftover in tmpdir.glob("*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            with contextlib.suppress(OSError):
                tmpdir.rmdir()
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def data_file_names(out: Path) -> tuple[str, str]:
    """The two names :func:`save_model` gives the external data file of ``out``, used in turn.

    Why two: overwriting a model saved with external data must never pair the old model file with a new
    data file (or the reverse), whatever moment a crash or Ctrl-C strikes. The new data is written under
    the name the existing model does *not* read, the model file is replaced last in one ``os.replace``, and
    only then is the old data file removed. A first save (or one over a model without external data) uses
    ``<name>.data``; overwriting a model that reads ``<name>.data`` writes ``<name>.1.data``, and the next
    overwrite goes back to ``<name>.data``.
    """
    return out.name + ".data", out.name + ".1.data"


def _own_data_files(out: Path) -> list[Path]:
    """Data files with one of our names (:func:`data_file_names`) that the model at ``out`` reads now."""
    if not out.is_file():
        return []
    try:
        current = onnx.load_model(str(out), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError, TypeError):
        return []
    ours = set(data_file_names(out))
    return [out.parent / name for name in external_data_files(current) if name in ours]


def _free_data_name(out: Path, in_use: list[Path]) -> str:
    """The first of our data file names that the model at ``out`` does not read."""
    used = {p.name for p in in_use}
    return next(name for name in data_file_names(out) if name not in used)


_VALUE_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data",
                 "uint64_data", "data_location", "external_data")
#: Large external tensors start on a page boundary so readers can memory-map them.
_ALIGN_BYTES = 4096
_ALIGN_FROM = 1 << 20


def _write_model(model: ModelProto, model_path: Path, data_path: Path | None, location: str,
                 replace: Callable[[TensorProto], TensorProto] | None = None) -> bool:
    """Stream ``model`` to ``model_path`` one initializer at a time; ``model`` is only read.

    Why: ``model.SerializeToString()`` holds the whole serialized model (and, inside protobuf, another
    buffer) next to the model, three models in memory at once; and moving tensors to external data by
    editing the model in place grows protobuf's arena by a model each save, and leaves the caller's model
    half-restored if the disk fills mid-write. Protobuf's wire format is a concatenation of fields, so the
    file is written as: the model's fields except ``graph``, then the ``graph`` field, whose payload is the
    graph's fields except ``initializer`` followed by each initializer, inline or (with ``data_path``)
    as an external-data stub whose bytes go to the data file. Peak memory is one model plus one tensor
    (plus one replaced tensor, see :func:`save_model`).

    Returns:
        Whether any tensor was written to ``data_path``.

    Raises:
        OutputError: the model refers to external data not loaded, or is too large for one file.
        OSError: a write failed (the caller cleans up).
    """
    for tensor in _all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            raise OutputError(
                f"tensor '{tensor.name}' still refers to external data that was never loaded; load the model "
                f"with onnxprune.core.io.load_model (or onnx.load with its external data) before saving"
            )
    head = ModelProto()
    copy_fields(head, model, skip=("graph",))
    graph = GraphProto()
    copy_fields(graph, model.graph, skip=("initializer",))
    stubs: dict[int, TensorProto] = {}

    def value(tensor: TensorProto) -> TensorProto:
        return tensor if replace is None else replace(tensor)

    if data_path is not None:
        with open(data_path, "wb") as data:
            for i, tensor in enumerate(model.graph.initializer):
                if tensor.ByteSize() >= EXTERNAL_MIN_BYTES:
                    stubs[i] = _write_external(value(tensor), data, location)
            for node in graph.node:  # large Constant-node values of the main graph (our copy: edit freely)
                if node.op_type == "Constant":
                    for a in node.attribute:
                        if a.name == "value" and a.t.ByteSize() >= EXTERNAL_MIN_BYTES:
                            a.t.CopyFrom(_write_external(a.t, data, location))
            data.flush()
            os.fsync(data.fileno())
    graph_head = graph.SerializeToString()
    sizes = [(stubs[i] if i in stubs else value(t)).ByteSize() for i, t in enumerate(model.graph.initializer)]
    init_tag = _field_tag(GraphProto, "initializer")
    graph_len = len(graph_head) + sum(len(init_tag) + len(_varint(n)) + n for n in sizes)
    head_bytes = head.SerializeToString()
    graph_tag = _field_tag(ModelProto, "graph")
    total = len(head_bytes) + len(graph_tag) + len(_varint(graph_len)) + graph_len
    if total > PROTOBUF_LIMIT:
        raise OutputError(
            f"model is {total} bytes, over protobuf's 2 GiB limit for one file; save it with external data "
            f"(--external-data, or save_model(..., external_data=True))"
        )
    with open(model_path, "wb") as fh:
        fh.write(head_bytes + graph_tag + _varint(graph_len) + graph_head)
        for i, tensor in enumerate(model.graph.initializer):
            fh.write(init_tag + _varint(sizes[i]))
            fh.write((stubs[i] if i in stubs else value(tensor)).SerializeToString())
        fh.flush()
        os.fsync(fh.fileno())
    return data_path is not None and data_path.stat().st_size > 0


def _write_external(tensor: TensorProto, data: BinaryIO, location: str) -> TensorProto:
    """Append ``tensor``'s bytes to ``data``; return a copy of it that points there instead."""
    blob = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
    offset = data.tell()
    if len(blob) >= _ALIGN_FROM and offset % _ALIGN_BYTES:
        data.write(b"\0" * (_ALIGN_BYTES - offset % _ALIGN_BYTES))
        offset = data.tell()
    data.write(blob)
    stub = TensorProto()
    copy_fields(stub, tensor, skip=_VALUE_FIELDS)
    stub.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(blob)))):
        entry = stub.external_data.add()
        entry.key = key
        entry.value = value
    return stub


def _field_tag(message: type[Message], field: str) -> bytes:
    """Wire-format key of a length-delimited field (number << 3 | 2)."""
    return _varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | 2)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
