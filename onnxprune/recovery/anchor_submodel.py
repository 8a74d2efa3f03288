"""Whole-model anchors run from cached activations: only the part of a candidate its cut changes is run.

Why this module exists: a sensitivity anchor (:meth:`onnxprune.recovery.sensitivity.SensitivityRun.estimate`)
needs the model's output error when one group is cut. Everything upstream of the cut computes what the dense
model computes, so running it again for each of the candidates is wasted work. Here each candidate is cut as
usual, the nodes it changed (a node differing from the original's, or reading a different initializer) and
everything downstream of them form a sub-model, and the sub-model is fed the dense model's activations at its
inputs, collected in one pass per flush of pending candidates of the part of the dense model that computes
them. The ops that run are the candidate's own on the same inputs, so the error equals the whole-model one to
float round-off (tested).

Candidates are built and held until a flush (when the held sub-models pass :data:`FLUSH_BYTES`, and at the
end). A flush goes batch by batch (the dense model's activations for one batch, then every held sub-model on
them), so memory is bounded by one flush's sessions and one batch's tensors, whatever the samples.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper

from onnxprune.core.ir import GraphIndex, has_subgraph
from onnxprune.core.progress import progress
from onnxprune.recovery.calibrate import tensor_types

log = logging.getLogger(__name__)

K = TypeVar("K")

#: Serialized sub-model bytes held before the pending candidates are run (bounds memory on large models).
FLUSH_BYTES = 256 << 20


@dataclass
class _Pending:
    key: object
    model: ModelProto | None  # the sub-model without its graph inputs; None: nothing changed (error 0)
    needed: tuple[str, ...]
    outputs: tuple[str, ...]


class SubModelAnchors:
    """Measures candidates' relative L2 output errors by running only what their cut changed.

    Args:
        model: the original model.
        batches / reference / outputs: the calibration batches, the original's outputs on them, and the
            float outputs compared (as :class:`onnxprune.recovery.executor.CandidateSpec`).
        threads: onnxruntime intra-op threads (``None``: its default).
        desc: what progress bars (or progress lines) call a flush, counted in batches.
    """

    def __init__(self, model: ModelProto, batches: Sequence[Mapping[str, np.ndarray]],
                 reference: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[str], *,
                 threads: int | None = None, desc: str = "sub-models") -> None:
        from onnxprune.runtime.session import create_session, run_session

        self._create, self._run = create_session, run_session
        self.model, self.batches, self.reference = model, list(batches), list(reference)
        self.outputs, self.threads, self.desc = tuple(outputs), threads, desc
        self._nodes = {n.SerializeToString() for n in model.graph.node}
        self._inits = {t.name: t for t in model.graph.initializer}
        self._inputs = {i.name for i in model.graph.input}
        self._batched = set(self._inputs) - set(self._inits)  # tensors computed from the data (batch axis first)
        for node in model.graph.node:  # topological order
            if any(i in self._batched for i in node.input):
                self._batched.update(o for o in node.output if o)
        self.ref_norm = math.sqrt(sum(float(np.sum(np.square(r[n], dtype=np.float64)))
                                      for r in self.reference for n in self.outputs))
        self._types: dict[str, int] | None = None  # element types, for the dense prefix's outputs
        self._pending: list[_Pending] = []
        self._held = 0
        self.results: dict[object, float] = {}

    @staticmethod
    def supported(model: ModelProto) -> bool:
        """Whether sub-models can be cut out of ``model`` (no control flow reading outer-scope names)."""
        return not any(has_subgraph(n) for n in model.graph.node) and not model.functions

    def _changed(self, node: NodeProto, inits: Mapping[str, object]) -> bool:
        if node.SerializeToString() not in self._nodes:
            return True
        for name in node.input:
            t = inits.get(name)
            if t is not None and (name not in self._inits or t != self._inits[name]):
                return True
        return False

    def add(self, key: object, candidate: ModelProto) -> ModelProto | None:
        """Queue ``candidate`` (measured under ``key`` in :attr:`results` at the next :meth:`flush`); the
        sub-model that will run (its inputs added at the flush), ``None`` when no compared output changes."""
        inits = {t.name: t for t in candidate.graph.initializer}
        affected: set[str] = set()  # tensors whose values differ from the dense model's
        nodes: list[NodeProto] = []
        for node in candidate.graph.node:  # topological order
            if self._changed(node, inits) or any(i in affected for i in node.input):
                nodes.append(node)
                affected.update(o for o in node.output if o)
        outs = tuple(o for o in self.outputs if o in affected)
        if not outs:
            self._pending.append(_Pending(key, None, (), ()))
            return None
        produced = {o for n in nodes for o in n.output}
        needed = tuple(dict.fromkeys(i for n in nodes for i in n.input
                                     if i and i not in produced and i not in inits))
        used = {i for n in nodes for i in n.input}
        graph = helper.make_graph(nodes, "anchor", [], [o for o in candidate.graph.output if o.name in outs],
                                  initializer=[t for t in candidate.graph.initializer if t.name in used])
        sub = helper.make_model(graph, opset_imports=list(candidate.opset_import))
        sub.ir_version = candidate.ir_version
        self._pending.append(_Pending(key, sub, needed, outs))
        self._held += sub.ByteSize()
        if self._held >= FLUSH_BYTES:
            self.flush()
        return sub

    def flush(self) -> None:
        """Run every queued candidate, batch by batch: one dense run per batch for the activations they read,
        then each sub-model on it.

        Batch by batch, so only one batch's activations are held (a full-size CNN's inputs to its deeper
        blocks over hundreds of samples would not fit), and each candidate's squared error is summed in batch
        order, as a whole-model pass sums it.
        """
        pending, self._pending, self._held = self._pending, [], 0
        if not pending:
            return
        wanted = list(dict.fromkeys(n for p in pending for n in p.needed if n not in self._inputs))
        cut = [p for p in pending if p.model is not None]
        # one single-threaded session per sub-model, as many at a time as there are cores: no thread pool to
        # build per session (about as long as building the session itself on RegNetX-400MF), and the runs,
        # which release the GIL, fill the cores; each candidate's sum is its own, in batch order
        parallel = self.threads is None and len(cut) > 1
        threads = 1 if parallel else self.threads
        totals = [0.0] * len(cut)
        dense = self._create(self._prefix(wanted), threads=self.threads) if wanted else None
        with ThreadPoolExecutor(max_workers=min(len(cut), os.cpu_count() or 1) if parallel else 1) as pool:
            sessions: list[object] = []
            batches = enumerate(zip(self.batches, self.reference, strict=True))
            for i, (batch, ref) in progress(batches, desc=self.desc, total=len(self.batches)):
                feeds = dict(batch)
                if dense is not None:
                    feeds.update(self._run(dense, batch, outputs=list(wanted), label="the original model"))
                if i == 0:  # the sub-models' input shapes are the activations'
                    sessions = list(pool.map(partial(self._session, first=feeds, threads=threads), cut))
                totals = list(pool.map(partial(self._add_error, feeds=feeds, ref=ref), cut, sessions, totals))
        log.debug("anchor sub-models: %d candidates, %d activations cached per batch", len(cut), len(wanted))
        self.results.update({p.key: self._relative(t) for p, t in zip(cut, totals, strict=True)})
        self.results.update({p.key: 0.0 for p in pending if p.model is None})

    def _prefix(self, wanted: Sequence[str]) -> ModelProto:
        """The part of the dense model that computes ``wanted``, which it outputs (and nothing else).

        Why: a flush needs the dense activations at its sub-models' inputs only; the whole model with those as
        extra outputs would run every node each flush (on a full-size ResNet-50 a flush holds about three
        sub-models, and the whole dense model takes about 4.6 s on 64 samples on 2 cores, whatever they read).
        """
        graph = self.model.graph
        needed = GraphIndex(self.model).ancestors(wanted)
        nodes = [n for n in graph.node if any(o in needed for o in n.output if o)]
        used = {i for n in nodes for i in n.input}
        if self._types is None:
            self._types = tensor_types(self.model)
        outputs = [helper.make_tensor_value_info(t, self._types.get(t, TensorProto.FLOAT), None) for t in wanted]
        inputs = [i for i in graph.input if i.name not in self._inits or i.name in used]
        part = helper.make_graph(nodes, "dense prefix", inputs, outputs,
                                 initializer=[t for t in graph.initializer if t.name in used],
                                 value_info=[v for v in graph.value_info if v.name in used - set(wanted)])
        model = helper.make_model(part, opset_imports=list(self.model.opset_import))
        model.ir_version = self.model.ir_version
        return model

    def _session(self, p: _Pending, first: Mapping[str, np.ndarray], *, threads: int | None) -> object:
        assert p.model is not None  # callers skip uncut candidates
        sub = p.model
        sub.graph.input.extend(helper.make_tensor_value_info(  # a constant's shape (a scalar too) is its own
            n, helper.np_dtype_to_tensor_dtype(first[n].dtype),
            ["batch", *first[n].shape[1:]] if n in self._batched else list(first[n].shape))
            for n in p.needed)  # shapes known, so onnxruntime optimizes the sub-model as the whole one
        return self._create(sub, threads=threads)

    def _add_error(self, p: _Pending, sess: object, total: float, feeds: Mapping[str, np.ndarray],
                   ref: Mapping[str, np.ndarray]) -> float:
        """``total`` plus the candidate's squared error on one batch, output by output (the whole-model order)."""
        got = self._run(sess, {n: feeds[n] for n in p.needed}, outputs=list(p.outputs), label="a pruned candidate")
        for n in p.outputs:
            total += float(np.sum(np.square(got[n].astype(np.float64) - ref[n])))
        return total

    def _relative(self, total: float) -> float:
        # as CandidateEvaluator.error, so an anchor equals its whole-model measurement
        return float(np.sqrt(total) / self.ref_norm) if self.ref_norm > 0 else float(np.sqrt(total))


def measure_anchors(model: ModelProto, build: Callable[[K], ModelProto], keys: Sequence[K],
                    batches: Sequence[Mapping[str, np.ndarray]], reference: Sequence[Mapping[str, np.ndarray]],
                    outputs: Sequence[str], *, threads: int | None = None, desc: str = "sub-models") -> dict[K, float]:
    """Relative L2 output error of the candidate ``build(key)`` for every key, from cached activations."""
    runner = SubModelAnchors(model, batches, reference, outputs, threads=threads, desc=desc)
    for key in keys:
        runner.add(key, build(key))
    runner.flush()
    return {key: runner.results[key] for key in keys}
