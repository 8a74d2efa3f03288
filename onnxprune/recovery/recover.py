"""Recovery without retraining: re-fit what pruning left so each layer's output stays what it was.

Why this module exists: pruning removes inputs of the layers downstream of a cut (structured) or single
weights (unstructured, N:M). Instead of retraining, each affected layer is re-fitted on calibration data
so its output matches the *original* layer's output ``Y = X Wᵀ + b`` as closely as possible:

* **bias** — a dropped input column carried, on average, ``mean(x_j)``; its contribution
  ``W[:, j] · mean(x_j)`` is folded into the layer's bias (a bias input or an ``Add`` is created when
  there is none). Exact when the dropped channel is constant. Without data, the mean comes from the
  BatchNormalization that produced the channel (``beta``, or ``E[relu(N(beta, gamma²))]`` after a ReLU).
* **lstsq** — the kept weights (and the bias) are re-solved by ridge-regularized least squares from the
  Gram matrix of the original layer input, all output channels at once. Exact when a dropped column is a
  linear combination of kept ones.
* **masked re-fit** (unstructured, N:M) — per output row, the surviving weights are re-solved with the
  sparsity mask fixed.

Everything here is plain numpy on Gram statistics (:mod:`onnxprune.recovery.calibrate`), so it runs in seconds even
when the calibration set is large. The ridge term pulls towards the *current* weights rather than towards
zero: with little data the solution stays close to plain pruning instead of shrinking the layer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, helper, numpy_helper

from onnxprune.core.errors import ConfigError
from onnxprune.core.io import load_model
from onnxprune.core.ir import GraphIndex, attr
from onnxprune.core.quant import quantized_data
from onnxprune.core.weights import PrunableWeight, find_prunable_weights, get_weight, set_weight
from onnxprune.recovery.calibrate import GRAM_OPS, ActivationStats, collect_stats, rows_to_weight, weight_rows
from onnxprune.recovery.solvers import (
    DEFAULT_RIDGE,
    affine_refit,
    bn_channel_mean,
    compensate_bias,
    masked_refit,
    require_finite,
)
from onnxprune.structured.analysis import DependencyGraph
from onnxprune.structured.axes import ChannelAxis

log = logging.getLogger(__name__)

# -- layer biases in the graph ---------------------------------------------------------------------
def _out_channels(node: NodeProto, w_shape: Sequence[int], opset: int) -> int:
    if node.op_type == "Conv":
        return int(w_shape[0])
    if node.op_type == "Gemm":
        return int(w_shape[0] if attr(node, "transB", opset, 0) else w_shape[1])
    return int(w_shape[-1])


def _bias_add(idx: GraphIndex, node: NodeProto, n_out: int) -> tuple[NodeProto, int] | None:
    """The ``Add`` that adds a per-channel constant to a MatMul's output, and the constant's slot."""
    readers = idx.consumers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "Add" or node.output[0] in idx.graph_outputs:
        return None
    add = readers[0]
    other = 1 if add.input[0] == node.output[0] else 0
    shape = idx.const_shape(add.input[other])
    if shape is None or int(np.prod(shape)) != n_out or (shape and shape[-1] != n_out):
        return None
    return add, other


#: Fused ops whose weight (input 1, ``[K, N]``) and bias (input 2) act like a MatMul + Add on their input
#: before anything else (onnxruntime's ``Attention``: the packed Q/K/V projection); re-fitted as such.
PACKED_READERS = ("Attention",)


def _gemm_beta(node: NodeProto, opset: int) -> float:
    """Gemm's ``beta`` (the scale of its C input); 1 for every other op."""
    if node.op_type != "Gemm":
        return 1.0
    return float(attr(node, "beta", opset, 1.0))  # type: ignore[arg-type]


def layer_bias(idx: GraphIndex, node: NodeProto, n_out: int) -> np.ndarray:
    """The per-output-channel bias a Conv/Gemm/MatMul (or :data:`PACKED_READERS` op) adds (zeros when it has
    none), as float64.

    Gemm's ``beta`` is folded in; a MatMul's bias is the constant of the one ``Add`` reading its output.
    """
    if node.op_type in ("Conv", "Gemm") + PACKED_READERS and len(node.input) > 2 and node.input[2]:
        value = idx.const_value(node.input[2])
        if value is not None and value.size in (1, n_out):
            scale = _gemm_beta(node, idx.opset)
            return np.broadcast_to(value.astype(np.float64).ravel() * scale, (n_out,)).copy()
    if node.op_type == "MatMul":
        found = _bias_add(idx, node, n_out)
        if found is not None:
            value = idx.const_value(found[0].input[found[1]])
            assert value is not None
            return value.astype(np.float64).ravel()
    return np.zeros(n_out)


def set_layer_bias(idx: GraphIndex, node: NodeProto, bias: np.ndarray, dtype: np.dtype) -> None:
    """Give ``node`` (in ``idx``'s model, edited in place) the per-output-channel ``bias``.

    An existing bias constant read only by this layer is overwritten; otherwise a new initializer is
    made (named ``onnxprune_*``): the Conv ``B`` / Gemm ``C`` input, or for a MatMul the constant of its
    bias ``Add`` or a new ``Add`` node inserted after it (the MatMul's output name is kept downstream).
    """
    graph = idx.graph
    n_out = bias.shape[0]
    if node.op_type in ("Conv", "Gemm") + PACKED_READERS:
        value = bias / _gemm_beta(node, idx.opset)
        name = idx.unique_name(f"{node.name or node.output[0]}_bias")
        graph.initializer.append(numpy_helper.from_array(value.astype(dtype), name))
        if len(node.input) > 2 and node.input[2]:
            old = node.input[2]
            node.input[2] = name
            _drop_if_unused(idx, old, node)
        else:
            while len(node.input) < 2:
                node.input.append("")
            node.input.append(name)
        return
    found = _bias_add(idx, node, n_out)
    if found is not None:
        add, slot = found
        shape = idx.const_shape(add.input[slot])
        assert shape is not None
        name = idx.unique_name(f"{node.name or node.output[0]}_bias")
        graph.initializer.append(numpy_helper.from_array(bias.reshape(shape).astype(dtype), name))
        old = add.input[slot]
        add.input[slot] = name
        _drop_if_unused(idx, old, add)
        return
    name = idx.unique_name(f"{node.name or node.output[0]}_bias")
    graph.initializer.append(numpy_helper.from_array(bias.astype(dtype), name))
    out = node.output[0]
    inner = idx.unique_name(f"{out}_nobias")
    node.output[0] = inner
    add = helper.make_node("Add", [inner, name], [out], name=idx.unique_name(f"{node.name or out}_bias_add"))
    position = next(i for i, n in enumerate(graph.node) if n is node)
    graph.node.insert(position + 1, add)


def _drop_if_unused(idx: GraphIndex, name: str, old_reader: NodeProto) -> None:
    """Remove initializer ``name`` when ``old_reader`` was its only reader."""
    readers = [n for n in idx.consumers.get(name, []) if n is not old_reader]
    if readers or name not in idx.initializers or name in idx.graph_outputs:
        return
    graph = idx.graph
    for i, t in enumerate(graph.initializer):
        if t.name == name:
            del graph.initializer[i]
            break


# -- unstructured / N:M recovery -------------------------------------------------------------------
def refuse_quantized(model: ModelProto, *, doing: str = "recovery re-fits float weights",
                     fix: str = "pass --recover none (bias is the default with --calib), or recover the float "
                                "model and quantize it afterwards") -> None:
    """Refuse a QDQ model: a method that computes float weights (``doing``) would de-quantize it.

    Raises:
        ConfigError: the model has weights stored as integers behind DequantizeLinear; names ``fix``.
    """
    quant = quantized_data(GraphIndex(model))
    if quant:
        raise ConfigError(f"{doing}, but this model is quantized (e.g. '{next(iter(quant))}' behind "
                          f"DequantizeLinear); {fix}")


def recover_sparse(
    original: str | os.PathLike[str] | ModelProto,
    sparse_model: str | os.PathLike[str] | ModelProto,
    data: str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]] | ActivationStats,
    *,
    method: str = "lstsq",
    ridge: float = DEFAULT_RIDGE,
    batch_size: int = 32,
    max_samples: int | None = None,
) -> ModelProto:
    """Re-fit the surviving weights of a sparsified model so each layer reproduces the original one.

    Each sparsified Conv/Gemm/MatMul weight (read by one layer) is re-solved row by row with its zero
    pattern fixed (:func:`masked_refit`), from the Gram matrix of the layer's input in the *original*
    model; the zero pattern (and so the sparsity, N:M included) is unchanged. ``method="bias"`` instead
    folds the mean contribution of the zeroed weights into the layer's bias.

    Args:
        original: the dense model.
        sparse_model: the same model with weights zeroed (by :func:`onnxprune.sparse.sparsify.sparsify` or
            ``sparsify_nm``); not modified.
        data: calibration data (npz path or iterable of feed dicts) or precomputed
            :class:`~onnxprune.recovery.calibrate.ActivationStats` of ``original`` with the layers' Grams.
        method: ``"lstsq"`` (masked re-fit) or ``"bias"``.
        ridge: relative ridge of the re-fit.
        batch_size, max_samples: calibration batching.

    Returns:
        A new ``ModelProto``.

    Raises:
        ConfigError: unknown method, or the two models do not have the same weights.
        CalibrationError: bad calibration data.

    Example:
        >>> dense = "mlp.onnx"; sparse = sparsify(dense, sparsity=0.7).model  # doctest: +SKIP
        >>> recovered = recover_sparse(dense, sparse, "calib.npz")  # doctest: +SKIP
    """
    if method not in ("lstsq", "bias"):
        raise ConfigError(f"sparse recovery method must be lstsq or bias, got '{method}'")
    orig = load_model(original, check=False)
    refuse_quantized(orig)
    out = load_model(sparse_model, check=False)
    idx_o = GraphIndex(orig)
    idx = GraphIndex(out)
    todo: list[tuple[PrunableWeight, str, NodeProto, np.ndarray, np.ndarray]] = []
    dense_weights = {pw.name: pw for pw in find_prunable_weights(orig)}
    for pw in find_prunable_weights(out):
        if len(pw.readers) != 1 or pw.op_types[0] not in GRAM_OPS:
            continue
        dpw = dense_weights.get(pw.name)
        if dpw is None or dpw.shape != pw.shape:
            raise ConfigError(
                f"weight '{pw.name}' is not in the original model with shape {pw.shape}; pass the model "
                f"that was sparsified as 'original'"
            )
        w_sparse = get_weight(out, pw)
        w_dense = get_weight(orig, dpw)
        if np.array_equal(w_sparse, w_dense):
            continue
        node = idx.nodes_by_name[pw.readers[0]]
        if node.op_type == "MatMul" and w_dense.ndim != 2:
            log.info("not re-fitting batched MatMul weight '%s'", pw.name)
            continue
        todo.append((pw, pw.readers[0], node, w_dense, w_sparse))
    if not todo:
        log.info("recover_sparse: no sparsified layer to re-fit")
        return out
    stats = data if isinstance(data, ActivationStats) else collect_stats(
        orig, data, gram_for=[key for _, key, *_ in todo], batch_size=batch_size, max_samples=max_samples)
    for pw, key, node, w_dense, w_sparse in todo:
        gs = stats.gram(key)
        dense_rows = weight_rows(node, w_dense.astype(np.float64), idx.opset)
        sparse_rows = weight_rows(node, w_sparse.astype(np.float64), idx.opset)
        if method == "lstsq":
            new_rows = np.stack([
                masked_refit(dense_rows[g], sparse_rows[g] != 0, gs.gram[g], ridge=ridge,
                             cross=None if gs.cross is None else gs.cross[g])
                for g in range(gs.groups)
            ])
            value = rows_to_weight(node, new_rows, w_dense.shape, idx.opset).astype(w_dense.dtype)
            set_weight(out, pw, require_finite(value, key, method))
        else:
            n_out = _out_channels(node, w_dense.shape, idx.opset)
            shift = np.concatenate([(dense_rows[g] - sparse_rows[g]) @ gs.col_mean[g] for g in range(gs.groups)])
            node_o = idx_o.nodes_by_name[key]
            bias = layer_bias(idx_o, node_o, n_out) + shift
            set_layer_bias(idx, node, require_finite(bias.astype(w_dense.dtype), key, method), w_dense.dtype)
        log.debug("re-fitted %s (%s)", key, method)
    return out


# -- structured recovery ---------------------------------------------------------------------------
RECOVERY_METHODS = ("bias", "lstsq")
#: Ops a channel's mean passes through unchanged (or, for Flatten, repeated over positions).
_MEAN_PRESERVING = ("Identity", "Dropout", "GlobalAveragePool", "AveragePool", "Flatten")


@dataclass(frozen=True)
class SinkCut:
    """A layer whose input channels a structured cut removed, as recovery sees it.

    Attributes:
        key: the layer's node name (``<op_type>_<index>`` when unnamed) in the original model.
        node: the layer's node in the original model.
        weight: its weight constant.
        in_axis / out_axis: the weight's input (reduction) and output axes.
        keep_in: kept positions on the input axis (original coordinates, sorted).
        keep_out: kept positions on the output axis (all of them when the output is not cut).
        activation: the layer's data input tensor.
    """

    key: str
    node: NodeProto
    weight: str
    in_axis: int
    out_axis: int
    keep_in: np.ndarray
    keep_out: np.ndarray
    activation: str


def _weight_axes(node: NodeProto, opset: int) -> tuple[int, int]:
    """(input axis, output axis) of a Conv/Gemm/2-D MatMul weight."""
    if node.op_type == "Conv":
        return 1, 0
    if node.op_type == "Gemm":
        return (1, 0) if attr(node, "transB", opset, 0) else (0, 1)
    return 0, 1


def _find_node(idx: GraphIndex, label: str) -> tuple[str, NodeProto] | None:
    """``(key, node)`` of the node named ``label``, or whose first output is ``label``."""
    if label in idx.nodes_by_name:
        return label, idx.nodes_by_name[label]
    node = idx.producer.get(label)
    if node is None:
        return None
    key = next(k for k, n in idx.nodes_by_name.items() if n is node)
    return key, node


def plan_keep(plan: object) -> dict[int, np.ndarray]:
    """Kept root channels per group id, from a ``PrunePlan`` (its ``keep``) or a plain mapping."""
    keep = plan if isinstance(plan, Mapping) else getattr(plan, "keep", None)
    if not isinstance(keep, Mapping):
        raise ConfigError(f"expected a PrunePlan or a mapping group id → kept channels, got {type(plan).__name__}")
    return {int(g): np.asarray(k, dtype=np.int64) for g, k in keep.items()}


def sink_cuts(original: ModelProto, dg: DependencyGraph, plan: object, *,
              idx: GraphIndex | None = None) -> list[SinkCut]:
    """Every Conv/Gemm/MatMul whose input channels ``plan`` removes, with kept inputs and outputs
    (``idx``: ``GraphIndex(original)``, when the caller keeps one). A grouped Conv cut inside its conv
    groups (``grouped_conv="within"``) loses the same input positions in every group: ``keep_in`` holds
    them in the weight's coordinates (axis 1, per group); one cut by whole groups is no sink."""
    idx = idx if idx is not None else GraphIndex(original)
    kept = dg.kept_positions(plan_keep(plan))
    out: dict[str, SinkCut] = {}
    for group in dg.groups:
        for cut in group.sinks:
            if cut.op_type not in GRAM_OPS + PACKED_READERS:
                continue
            found = _find_node(idx, cut.node)
            if found is None:
                raise ConfigError(f"sink layer '{cut.node}' of group {group.id} is not in the original model; "
                                  f"pass the model the plan was made for")
            key, node = found
            if key in out:
                continue
            in_axis, out_axis = _weight_axes(node, idx.opset)
            wslot = ChannelAxis(cut.tensor, in_axis)
            if wslot not in kept:
                continue
            shape = dg.const_shapes.get(cut.tensor) or idx.const_shape(node.input[1])
            if shape is None:
                continue
            keep_out = kept.get(ChannelAxis(cut.tensor, out_axis), np.arange(shape[out_axis], dtype=np.int64))
            out[key] = SinkCut(key, node, cut.tensor, in_axis, out_axis, kept[wslot], keep_out, node.input[0])
    return list(out.values())


def conv_groups(node: NodeProto, opset: int) -> int:
    """A Conv's ``group`` attribute (1 for other layers)."""
    return int(attr(node, "group", opset, 1)) if node.op_type == "Conv" else 1  # type: ignore[call-overload]


def _kernel_size(node: NodeProto, w_shape: Sequence[int]) -> int:
    return int(np.prod(w_shape[2:])) if node.op_type == "Conv" else 1


def _expand_cols(channels: np.ndarray, k: int) -> np.ndarray:
    """Channel positions → im2col columns (each channel owns ``k`` consecutive kernel columns)."""
    return (channels[:, None] * k + np.arange(k)[None, :]).reshape(-1)


def bn_input_means(idx: GraphIndex, tensor: str, width: int) -> np.ndarray | None:
    """Data-free per-position means of ``tensor`` (``width`` positions) from the BatchNormalization
    feeding it through ReLU and mean-preserving ops; ``None`` when there is no such BN."""
    relu = False
    name = tensor
    for _ in range(64):
        node = idx.producer.get(name)
        if node is None:
            return None
        if node.op_type == "Relu" and not relu:
            relu = True
        elif node.op_type == "BatchNormalization":
            gamma, beta = idx.const_value(node.input[1]), idx.const_value(node.input[2])
            if gamma is None or beta is None or width % gamma.size:
                return None
            return np.repeat(bn_channel_mean(beta, gamma, relu=relu), width // gamma.size)
        elif node.op_type not in _MEAN_PRESERVING:
            return None
        name = node.input[0]
    return None


def _replace_weight(idx: GraphIndex, node: NodeProto, slot: int, value: np.ndarray) -> None:
    """Point ``node.input[slot]`` at ``value`` (overwritten in place when only this node reads it)."""
    name = idx.resolve_identity(node.input[slot])
    tensor = idx.initializers.get(name)
    readers = idx.const_readers(name)
    if tensor is not None and readers == [node]:
        if tuple(tensor.dims) != value.shape:
            raise ConfigError(f"weight '{name}' has shape {tuple(tensor.dims)}, re-fit gave {value.shape}")
        new = numpy_helper.from_array(np.ascontiguousarray(value), name)
        tensor.CopyFrom(new)
        return
    fresh = idx.unique_name(f"{node.name or node.output[0]}_weight")
    idx.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), fresh))
    node.input[slot] = fresh


def recover_structured(
    original_model: str | os.PathLike[str] | ModelProto,
    pruned_model: str | os.PathLike[str] | ModelProto,
    dg: DependencyGraph,
    plan: object,
    stats_or_data: ActivationStats | str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]] | None,
    *,
    method: str = "lstsq",
    ridge: float = DEFAULT_RIDGE,
    batch_size: int = 32,
    max_samples: int | None = None,
) -> ModelProto:
    """Re-fit every layer that lost input channels so its output matches the original layer's.

    For each sink (Conv/Gemm/MatMul whose input-channel axis absorbed a cut), the target is the original
    layer's output on its kept output channels, ``X Wᵀ + b`` with ``X`` the *original* model's activation
    at the sink's input (dropped and kept columns alike):

    * ``lstsq``: kept weights and bias re-solved by ridge least squares (:func:`affine_refit`) from the
      input Gram matrix (im2col for Conv).
    * ``bias``: kept weights unchanged, the dropped columns' mean contribution folded into the bias
      (:func:`compensate_bias`); with no data (``stats_or_data=None``) the means come from the
      BatchNormalization(+ReLU) producing each channel.

    Args:
        original_model: the unpruned model.
        pruned_model: ``apply_plan(original_model, plan)``; not modified.
        dg: ``analyze(original_model)``.
        plan: the ``PrunePlan`` (or mapping group id → kept channels) that was applied.
        stats_or_data: calibration data (npz path, feed dicts), :class:`ActivationStats` of the original
            model (with the sinks' Grams for ``lstsq``, their input channels for ``bias``), or ``None``
            for data-free ``bias``.
        method: ``"lstsq"`` or ``"bias"``.
        ridge: relative ridge of ``lstsq``.
        batch_size, max_samples: calibration batching.

    Returns:
        A new ``ModelProto`` with the same structure as ``pruned_model``.

    Raises:
        ConfigError: unknown method, ``lstsq`` without data, or a pruned model that does not match.
        CalibrationError: bad calibration data.

    Example:
        >>> fixed = recover_structured(model, pruned, dg, plan, "calib.npz", method="lstsq")  # doctest: +SKIP
    """
    if method not in RECOVERY_METHODS:
        raise ConfigError(f"recovery method must be one of {', '.join(RECOVERY_METHODS)}, got '{method}'")
    if method == "lstsq" and stats_or_data is None:
        raise ConfigError("recovery 'lstsq' needs calibration data; pass --calib data.npz or use --recover bias")
    orig = load_model(original_model, check=False)
    refuse_quantized(orig)
    out = load_model(pruned_model, check=False)
    cuts = sink_cuts(orig, dg, plan)
    if not cuts:
        return out
    idx_o, idx = GraphIndex(orig), GraphIndex(out)
    stats: ActivationStats | None
    if stats_or_data is None or isinstance(stats_or_data, ActivationStats):
        stats = stats_or_data
    elif method == "lstsq":
        stats = collect_stats(orig, stats_or_data, gram_for=[c.key for c in cuts], batch_size=batch_size,
                              max_samples=max_samples)
    else:
        stats = collect_stats(orig, stats_or_data, tensors={c.activation: recovery_input_axis(c, idx_o.opset)
                                                            for c in cuts},
                              batch_size=batch_size, max_samples=max_samples)
    for cut in cuts:
        _recover_sink(orig, idx_o, out, idx, cut, stats, method, ridge)
    return out


def recovery_input_axis(cut: SinkCut, opset: int = 17) -> int:
    """The channel axis of a sink's data input that bias recovery measures (Conv 1, Gemm 1, MatMul -1)."""
    node = cut.node
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 0 if attr(node, "transA", opset, 0) else 1
    return -1


def _recover_sink(orig: ModelProto, idx_o: GraphIndex, out: ModelProto, idx: GraphIndex, cut: SinkCut,
                  stats: ActivationStats | None, method: str, ridge: float) -> None:
    """Re-fit one sink, conv group by conv group (one group for a plain layer): each group's kept outputs
    from its own input Gram (``lstsq``) or its own input means (``bias``); the same columns go in every group."""
    node = cut.node
    w = idx_o.const_value(node.input[1])
    assert w is not None
    k = _kernel_size(node, w.shape)
    groups = conv_groups(node, idx_o.opset)
    n_out_full = _out_channels(node, w.shape, idx_o.opset)
    per_group = n_out_full // groups
    all_rows = weight_rows(node, w.astype(np.float64), idx_o.opset)  # (G, O/G, K)
    all_bias = layer_bias(idx_o, node, n_out_full)
    width = w.shape[cut.in_axis]
    keep_cols = _expand_cols(cut.keep_in, k)
    drop_cols = _expand_cols(np.setdiff1d(np.arange(width), cut.keep_in), k)
    means = None
    if method == "bias":
        means = column_means(idx_o, cut, stats, width, groups)
        if means is None:
            log.info("no mean for the dropped inputs of %s; bias left as is", cut.key)
            return
    parts_w, parts_b = [], []
    for g in range(groups):
        outs = cut.keep_out[cut.keep_out // per_group == g]
        rows, bias = all_rows[g][outs - g * per_group], all_bias[outs]
        if method == "lstsq":
            assert stats is not None
            gs = stats.gram(cut.key)
            new_rows, new_bias = affine_refit(rows, bias, gs.gram[g], gs.col_sum[g], gs.rows, keep_cols, ridge=ridge)
        else:
            assert means is not None
            new_rows, new_bias = rows[:, keep_cols], compensate_bias(rows, bias, drop_cols, np.repeat(means[g], k))
        parts_w.append(new_rows)
        parts_b.append(new_bias)
    found = _find_node(idx, cut.key) or _find_node(idx, node.output[0])
    if found is None:
        raise ConfigError(f"layer '{cut.key}' is not in the pruned model; pass the model apply_plan returned")
    node_p = found[1]
    shape_p = idx.const_shape(node_p.input[1])
    expect = list(w.shape)
    expect[cut.in_axis], expect[cut.out_axis] = len(cut.keep_in), len(cut.keep_out)
    if shape_p is None or list(shape_p) != expect:
        raise ConfigError(
            f"layer '{cut.key}' has weight shape {shape_p} in the pruned model, the plan implies {tuple(expect)}; "
            f"pass the model apply_plan returned for this plan"
        )
    if method == "lstsq":  # rows in output order, groups one after another: the layout of a Conv weight too
        value = rows_to_weight(node_p, np.concatenate(parts_w)[None], shape_p, idx.opset).astype(w.dtype)
        _replace_weight(idx, node_p, 1, require_finite(value, cut.key, method))
    new_bias = np.concatenate(parts_b).astype(w.dtype)
    set_layer_bias(idx, node_p, require_finite(new_bias, cut.key, method), w.dtype)


def column_means(idx_o: GraphIndex, cut: SinkCut, stats: ActivationStats | None, width: int,
                 groups: int = 1) -> np.ndarray | None:
    """Mean of each input channel of a sink as ``(groups, width)`` (``width`` channels per conv group):
    measured when stats exist (the input's channel means, else the Gram's im2col column means averaged
    over the kernel), else from the BatchNormalization feeding it; None when neither is known."""
    total = width * groups
    if stats is not None:
        cs = stats.channels.get(cut.activation)
        if cs is not None and cs.channels == total:
            return cs.mean.reshape(groups, width)
        gs = stats.grams.get(cut.key)
        if gs is not None and gs.groups == groups:
            k = int(np.prod(gs.kernel)) if gs.kernel else 1
            return gs.col_mean.reshape(groups, width, k).mean(axis=2)
        return None
    means = bn_input_means(idx_o, cut.activation, total)
    return None if means is None else means.reshape(groups, width)
