"""Sequential least-squares re-fit of the layers that read a cut residual stream, in bounded memory.

What it computes (the rule of ``--mode width``): each reader (MatMul/Gemm with a constant weight) is
re-solved by ridge least squares so that, on calibration data, its output from the *pruned* model's
activation matches the *original* reader's output. Readers are fitted one after another in graph order,
each on the activations of the model whose earlier readers are already re-fitted (sequential calibration).

Why this module holds it apart from the width rules: done naively (a copy of the model with extra outputs and
a new onnxruntime session per reader, each fitted weight appended to a copy of the model) the re-fit held
many copies of the weights at once: 10x a 0.1 GB model's size, and most of the run's time. Here:

- the output model is built once, without the readers' weights (:func:`copy_model_without_weights`), and
  each fitted weight is written into it once (python protobuf keeps a replaced bytes field alive until the
  whole model is freed, so writing twice costs twice);
- one onnxruntime session serves every reader: the readers' weights and biases are *graph inputs* of that
  session, fed their current values on every run, so a fitted weight needs no new session;
- activations are fetched through sessions that map the weights from a temporary file and do not pre-pack
  them (``low_memory``), and the model is never copied to add the fetched outputs.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from onnxprune.core.errors import ConfigError, UnsupportedModelError
from onnxprune.core.io import load_structure, release_memory
from onnxprune.core.ir import GraphIndex, attr, copy_fields
from onnxprune.core.weights import little_endian_bytes
from onnxprune.recovery.calibrate import iter_feeds, rows_to_weight, tensor_types, weight_rows
from onnxprune.recovery.recover import SinkCut, layer_bias, set_layer_bias
from onnxprune.recovery.solvers import DEFAULT_RIDGE, solve_spd

log = logging.getLogger(__name__)

Data = str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]]


@contextmanager
def _extra_outputs(model: ModelProto, tensors: list[str], as_inputs: Mapping[str, TensorProto] | None = None
                   ) -> Iterator[ModelProto]:
    """``model`` itself, for the time of the ``with``, also outputting ``tensors`` (typed, stale value_info
    set aside) and reading the initializers ``as_inputs`` (which hold no data) as graph inputs.

    Why in place: a copy of the model to add outputs costs a model of memory; these edits touch small
    messages only and are undone on exit, so the model is as before (initializers moved to the end).
    """
    graph = model.graph
    as_inputs = as_inputs or {}
    existing = {o.name for o in graph.output}
    wanted = [t for t in dict.fromkeys(tensors) if t not in existing]
    known = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    missing = [t for t in wanted if t not in known]
    if missing:
        raise ConfigError(f"tensor '{missing[0]}' is not computed by the model; check the name with "
                          f"'onnxprune analyze'")
    types = tensor_types(model) if wanted else {}
    n_out, n_in = len(graph.output), len(graph.input)
    stale = [(i, vi) for i, vi in enumerate(graph.value_info) if vi.name in set(wanted)]
    saved_vi = [(i, _copy(vi)) for i, vi in stale]
    for i, _ in reversed(stale):
        del graph.value_info[i]
    moved = [(i, t.name) for i, t in enumerate(graph.initializer) if t.name in as_inputs]
    for i, _ in reversed(moved):
        del graph.initializer[i]
    try:
        for name, tensor in as_inputs.items():
            graph.input.append(helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
        for t in wanted:
            graph.output.append(helper.make_tensor_value_info(t, types.get(t, TensorProto.FLOAT), None))
        yield model
    finally:
        del graph.output[n_out:]
        del graph.input[n_in:]
        for _, name in moved:
            graph.initializer.add().CopyFrom(as_inputs[name])
        for i, vi in saved_vi:
            graph.value_info.insert(i, vi)


def _copy(message: Any) -> Any:
    out = type(message)()
    out.CopyFrom(message)
    return out


def collect(model: ModelProto, tensors: list[str], data: Data, max_samples: int | None, *,
            data_dir: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """Every calibration batch's values of ``tensors``, concatenated along the first axis (rows).

    One onnxruntime session that maps the weights from a file and does not pre-pack them; the model is
    not copied (see :func:`_extra_outputs`). ``data_dir``: ``model`` was loaded without its external data,
    which is in that folder: the session then runs a structure-only file written there, beside the data.
    """
    from onnxprune.runtime.session import create_session, run_session

    tensors = list(dict.fromkeys(tensors))  # readers sharing one input (q, k, v) ask for it once each
    feeds = list(iter_feeds(model, data, max_samples=max_samples))
    with _extra_outputs(model, tensors) as probe:
        session = create_session(probe, low_memory=True) if data_dir is None else _session_beside(probe, data_dir)
    parts: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for feed in feeds:
        values = run_session(session, feed, outputs=tensors)
        for t in tensors:
            parts[t].append(values[t])
    del session
    release_memory()
    return {t: np.concatenate(v, axis=0) for t, v in parts.items()}


def _session_beside(model: ModelProto, data_dir: str | os.PathLike[str]) -> Any:
    """A low-memory session of ``model`` (weights in external data under ``data_dir``), from a file written
    there just for the session's creation: onnxruntime resolves external data against the model's folder."""
    from onnxprune.runtime.session import create_session

    with tempfile.NamedTemporaryFile(dir=data_dir, prefix="onnxprune-probe-", suffix=".onnx", delete=False) as fh:
        fh.write(model.SerializeToString())  # the structure only (its weights stay in the data file)
    try:
        return create_session(fh.name, low_memory=True)
    finally:
        Path(fh.name).unlink(missing_ok=True)


def _rows(x: np.ndarray, node: NodeProto, opset: int) -> np.ndarray:
    """A reader's input as ``(rows, K)``: features on the last axis (MatMul, Gemm) or axis 0 (Gemm transA)."""
    if node.op_type == "Gemm" and attr(node, "transA", opset, 0):
        x = x.T
    return x.reshape(-1, x.shape[-1]).astype(np.float64)


def _order(model: ModelProto, cuts: list[SinkCut]) -> list[SinkCut]:
    position = {n.output[0]: i for i, n in enumerate(model.graph.node) if n.output}
    return sorted(cuts, key=lambda c: position.get(c.node.output[0], 0))


@dataclass
class _Slot:
    """One reader to fit: its node in the output model and the names of its own weight and bias there."""

    cut: SinkCut
    node: NodeProto
    weight: str
    bias: str
    dtype: np.dtype


def _layout(pruned: ModelProto, order: list[SinkCut]) -> tuple[ModelProto, list[_Slot], dict[str, np.ndarray]]:
    """The output model's structure, made once: every reader reads a weight of its own (``<node>_weight``,
    holding no data yet) and a bias of its own (a new ``Add`` after a MatMul without one), named as a
    re-fit one reader at a time names them. Returns it, the slots, and each slot tensor's current value.
    """
    idx_p = GraphIndex(pruned)
    found: list[tuple[SinkCut, NodeProto, np.ndarray, np.ndarray]] = []
    for cut in order:
        node = idx_p.nodes_by_name.get(cut.key)
        if node is None:
            raise ConfigError(f"reader '{cut.key}' is not in the pruned model")
        w_p = idx_p.const_value(node.input[1])
        if w_p is None:
            continue
        bias = layer_bias(idx_p, node, weight_rows(node, w_p, idx_p.opset).shape[1])
        found.append((cut, node, w_p, bias))
    readers = {id(node) for _, node, _, _ in found}
    # a weight only fitted readers use is dropped from the output (each gets its own): never copy its data
    only_fitted = {node.input[1] for _, node, _, _ in found
                   if all(id(n) in readers for n in idx_p.consumers.get(node.input[1], []))}
    only_fitted -= set(idx_p.graph_outputs) | {i.name for i in pruned.graph.input}
    out = ModelProto()
    copy_fields(out, pruned, skip=("graph",))
    copy_fields(out.graph, pruned.graph, skip=("initializer",))
    for tensor in pruned.graph.initializer:
        if tensor.name not in only_fitted:
            out.graph.initializer.add().CopyFrom(tensor)
    slots: list[_Slot] = []
    values: dict[str, np.ndarray] = {}
    for cut, _, w_p, bias in found:
        idx = GraphIndex(out)
        node = idx.nodes_by_name[cut.key]
        name = idx.unique_name(f"{node.name or node.output[0]}_weight")
        empty = out.graph.initializer.add()
        empty.name, empty.data_type = name, helper.np_dtype_to_tensor_dtype(w_p.dtype)
        empty.dims.extend(w_p.shape)
        node.input[1] = name
        values[name] = w_p
        before = {t.name for t in out.graph.initializer}
        set_layer_bias(GraphIndex(out), node, bias.astype(w_p.dtype), w_p.dtype)
        (bias_name,) = [t.name for t in out.graph.initializer if t.name not in before]
        slots.append(_Slot(cut, node, name, bias_name, w_p.dtype))
    for slot in slots:
        bias_tensor = next(t for t in out.graph.initializer if t.name == slot.bias)
        values[slot.bias] = numpy_helper.to_array(bias_tensor)
    return out, slots, values


def refit_readers(original: ModelProto | str | os.PathLike[str], pruned: ModelProto | list[ModelProto],
                  cuts: list[SinkCut], data: Data, *, ridge: float = DEFAULT_RIDGE, max_samples: int | None = None
                  ) -> tuple[ModelProto, list[dict[str, Any]]]:
    """Re-fit each reader in graph order on the pruned model's input so its output matches the original's.

    Solves ``min ‖[X_p 1] [W'; b'] − (X_o W + b)‖² + λ‖W' − W_k‖²`` per reader, with ``X_p`` the reader's
    input in the current pruned model and ``X_o`` in the original. Returns the new model and, per reader,
    the relative output error before and after the fit (on the calibration data). Neither input is
    modified. ``pruned`` given as a one-element list is handed over: the list is emptied once its structure
    is copied, so a caller that kept no other reference frees it before the fit (an argument passed
    itself stays referenced by the caller's frame until the call returns, whatever the callee drops).
    ``original`` given as a path (a model with external data) is never loaded: onnxruntime maps its
    weights, and each reader's weight is read from the file when its turn comes (the cuts' nodes are
    looked up there by their output).
    """
    from onnxprune.runtime.session import create_session, run_session

    data_dir = None
    if not isinstance(original, ModelProto):
        data_dir = Path(original).parent
        original = load_structure(original)
        producer = GraphIndex(original).producer
        cuts = [replace(c, node=producer[c.node.output[0]]) for c in cuts]
    idx_o = GraphIndex(original, data_dir=data_dir)
    order = _order(original, cuts)
    originals = collect(original, [c.activation for c in order], data, max_samples, data_dir=data_dir)
    owned = pruned if isinstance(pruned, list) else [pruned]
    del pruned
    out, slots, values = _layout(owned[0], order)
    feeds = list(iter_feeds(owned[0], data, max_samples=max_samples))
    owned.clear()
    release_memory()
    idx = GraphIndex(out)
    as_inputs = {name: idx.initializers[name] for s in slots for name in (s.weight, s.bias)}
    with _extra_outputs(out, [s.node.input[0] for s in slots], as_inputs) as probe:
        session = create_session(probe, low_memory=True)
    idx = GraphIndex(out)  # the initializers moved back are new messages
    fitted: list[dict[str, Any]] = []
    for slot in slots:
        cut, node = slot.cut, slot.node
        w_o = idx_o.const_value(cut.node.input[1])
        if w_o is None:
            continue
        rows_o = weight_rows(cut.node, w_o.astype(np.float64), idx_o.opset)[0]
        del w_o
        bias_o = layer_bias(idx_o, cut.node, rows_o.shape[0])
        x_o = _rows(originals[cut.activation], cut.node, idx_o.opset)
        target = (x_o @ rows_o.T + bias_o)[:, cut.keep_out]
        del rows_o, x_o
        x = np.concatenate([run_session(session, {**feed, **values}, outputs=[node.input[0]])[node.input[0]]
                            for feed in feeds], axis=0)
        x_p = _rows(x, node, idx.opset)
        w_p = values[slot.weight]
        rows_p = weight_rows(node, w_p.astype(np.float64), idx.opset)[0]
        bias_p = layer_bias(idx, node, rows_p.shape[0])
        aug = np.hstack([x_p, np.ones((x_p.shape[0], 1))])
        gram = aug.T @ aug
        k = x_p.shape[1]
        lam = ridge * max(float(np.mean(np.diag(gram)[:k])), 1e-12)
        reg = np.full(k + 1, lam)
        reg[k] = 0.0
        prior = np.vstack([rows_p.T, bias_p[None]])
        del rows_p
        gram[np.diag_indices_from(gram)] += reg  # the ridge in place: no second (K+1)² matrix
        sol = solve_spd(gram, aug.T @ target + reg[:, None] * prior)
        del gram
        before = float(np.linalg.norm(aug @ prior - target) / max(np.linalg.norm(target), 1e-30))
        after = float(np.linalg.norm(aug @ sol - target) / max(np.linalg.norm(target), 1e-30))
        del prior
        if not np.isfinite(sol).all():
            raise UnsupportedModelError(f"re-fit of reader '{cut.key}' gave non-finite weights")
        values[slot.weight] = rows_to_weight(node, sol[:k].T[None], w_p.shape, idx.opset).astype(slot.dtype)
        values[slot.bias] = _stored_bias(node, sol[k].astype(slot.dtype), values[slot.bias], idx.opset)
        del sol, w_p
        release_memory()  # one reader's float64 temporaries, so the next one's do not pile on top
        fitted.append({"layer": cut.key, "rel_error_before": before, "rel_error_after": after})
        log.info("re-fit %s: relative output error %.4f -> %.4f", cut.key, before, after)
    del session
    release_memory()
    for slot in slots:  # write each value once, dropping our array as soon as protobuf holds its copy
        tensor = idx.initializers[slot.weight]
        tensor.raw_data = little_endian_bytes(values.pop(slot.weight))
        idx.initializers[slot.bias].CopyFrom(numpy_helper.from_array(values.pop(slot.bias), slot.bias))
    release_memory()
    return out, fitted


def _stored_bias(node: NodeProto, bias: np.ndarray, stored: np.ndarray, opset: int) -> np.ndarray:
    """The tensor that gives ``node`` the per-output ``bias``, in the shape and type of the one it has
    (Gemm's ``C`` is scaled by ``beta``), as :func:`~onnxprune.recovery.recover.set_layer_bias` writes it."""
    if node.op_type == "Gemm":
        bias = bias / float(attr(node, "beta", opset, 1.0))  # type: ignore[arg-type]
    return np.ascontiguousarray(bias.reshape(stored.shape).astype(stored.dtype))
