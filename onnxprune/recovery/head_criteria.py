"""Data-aware importance of attention heads: what each head writes into the output projection, and what the
model loses when that head alone is silenced.

Why heads need their own measures: a head is a root channel of a group whose sinks are the output
projection's input rows (``[h*D, (h+1)*D)``, :func:`onnxprune.structured.attention.attention_heads`); its
channel statistics (mean ``|x|`` of each of its ``D`` channels) ignore the weights the head's output is
multiplied by, and two heads with equal activations can write very different amounts into the stream.
Two measures, both on calibration data:

* **output norm** (``--importance activation`` on a head group): the root-mean-square norm, per token, of
  the head's contribution to the output projection, ``sqrt(E‖x_h W_h‖²) = sqrt(tr(W_hᵀ G_hh W_h) / rows)``
  with ``G = XᵀX`` the projection input's Gram matrix (the one least-squares recovery already collects). It
  is exact on the calibration rows (a Gram identity, no sampling).
* **ablation** (``--importance ablation``): the relative output error ``Σ‖y_h − y‖² / Σ‖y‖²`` over every
  model output when head ``h`` alone is silenced (its rows of the output projection zeroed). One session per
  attention block, with the projection weights as overridable inputs: each calibration batch is read once and
  run once per head, so the cost is ``heads + 1`` passes over the calibration set per block.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import ModelProto, helper

from onnxprune.core.ir import GraphIndex
from onnxprune.recovery.calibrate import ActivationStats, iter_feeds
from onnxprune.structured.analysis import ChannelGroup, ParamCut
from onnxprune.structured.importance import slice_rows

log = logging.getLogger(__name__)

#: Samples of the calibration set an ablation pass reads (each is run once per head).
ABLATION_SAMPLES = 256


def head_sinks(group: ChannelGroup) -> list[ParamCut]:
    """The output projection's weight cuts of a head group (its sinks on MatMul/Gemm)."""
    return [c for c in group.sinks if c.op_type in ("MatMul", "Gemm") and c.input_index == 1]


def head_output_norm(group: ChannelGroup, weights: Mapping[str, np.ndarray], stats: ActivationStats
                     ) -> np.ndarray | None:
    """Per head: RMS norm per token of its contribution to the output projection(s) (None: no Gram measured).

    Args:
        group: a head group (see :func:`onnxprune.structured.attention.attention_heads`).
        weights: the sink weights by name (float).
        stats: calibration statistics holding the Gram of each sink layer's input.
    """
    energy = np.zeros(group.size, dtype=np.float64)
    used = 0
    for cut in head_sinks(group):
        gs = stats.grams.get(cut.node)
        if gs is None or gs.kind != "linear" or gs.rows == 0:
            continue
        rows = slice_rows(weights[cut.tensor], cut.axis)  # input position -> its row of output weights
        if rows.shape[0] != gs.gram.shape[-1]:
            continue
        gram = gs.gram[0]
        roots, positions = cut.map.pairs(group.size)
        for h in range(group.size):
            p = positions[roots == h]
            w = rows[p]
            energy[h] += float(np.sum((gram[np.ix_(p, p)] @ w) * w)) / gs.rows
        used += 1
    if not used:
        return None
    return np.sqrt(np.maximum(energy, 0.0))


def _weight_inputs(model: ModelProto, names: Iterable[str]) -> ModelProto | None:
    """A copy of ``model`` where the initializers ``names`` are also graph inputs (so a feed overrides them).

    None when one of them is no float initializer (a Constant node, a quantized weight).
    """
    m = ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    declared = {i.name for i in m.graph.input}
    for name in names:
        t = inits.get(name)
        if t is None or t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                            onnx.TensorProto.DOUBLE):
            return None
        if name not in declared:
            m.graph.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    return m


def _silenced(w: np.ndarray, cut: ParamCut, positions: np.ndarray) -> np.ndarray:
    out = np.array(w, copy=True)
    index: list[slice | np.ndarray] = [slice(None)] * out.ndim
    index[cut.axis] = positions
    out[tuple(index)] = 0
    return out


def head_ablation(group: ChannelGroup, model: ModelProto,
                  data: str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]], *, provider: str = "cpu",
                  batch_size: int = 32, max_samples: int | None = ABLATION_SAMPLES) -> np.ndarray | None:
    """Per head: relative error of every model output with that head alone silenced (None: cannot be run).

    Silencing zeroes the head's rows of the output projection: the same model the exactness oracle builds
    for a plan dropping only that head, so the score is what that one cut would cost.
    """
    sinks = head_sinks(group)
    index = GraphIndex(model)
    names = list(dict.fromkeys(c.tensor for c in sinks))
    probe = _weight_inputs(model, names) if sinks else None
    if probe is None:
        log.info("group %d: its output projection is no float initializer; ablation cannot silence its heads",
                 group.id)
        return None
    weights = {n: np.asarray(index.const_value(n)) for n in names}
    silenced: list[dict[str, np.ndarray]] = []
    for h in range(group.size):
        feed = dict(weights)
        for cut in sinks:
            feed[cut.tensor] = _silenced(feed[cut.tensor], cut, cut.positions(np.array([h], dtype=np.int64)))
        silenced.append(feed)
    # imported here: data_criteria imports this module, and a CLI run must not load onnxruntime before its
    # options are checked (see tests/recovery/test_ray_executor.py)
    from onnxprune.runtime.session import create_session, run_session

    session = create_session(probe, provider=provider)
    outputs = [o.name for o in model.graph.output]
    error = np.zeros(group.size, dtype=np.float64)
    scale = 0.0
    for feed in iter_feeds(model, data, batch_size=batch_size, max_samples=max_samples):
        base = run_session(session, {**feed, **weights}, outputs=outputs)
        scale += sum(float(np.sum(np.square(v, dtype=np.float64))) for v in base.values()
                     if np.issubdtype(v.dtype, np.floating))
        for h, override in enumerate(silenced):
            got = run_session(session, {**feed, **override}, outputs=outputs)
            error[h] += sum(float(np.sum(np.square(got[k].astype(np.float64) - base[k]))) for k in outputs
                            if np.issubdtype(base[k].dtype, np.floating))
    return error / max(scale, 1e-30)

