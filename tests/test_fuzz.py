"""Fuzzing the whole prune pipeline: random graphs × random options × ops onnxprune has no rule for.

The graphs come from the structured property test's strategy (``random_model``: chains, residuals,
concat/split, squeeze-excitation, depthwise, pooling, slices; conv, pooled-Gemm, flatten→Gemm and MatMul FFN
heads), reused rather than rewritten. On top of it this test draws:

* an op without a rule (``LpNormalization`` over channels, which onnxruntime runs) spliced in at a random
  point, so analysis must block the groups it touches instead of assuming it is elementwise;
* a random :class:`PruneConfig`: structured (criterion, ratio, global ranking, round-to, min-channels),
  unstructured (sparsity, scope), N:M, sparse storage.

For every example ``prune()`` (with its own validation) must succeed or raise only an ``OnnxPruneError``;
the result must pass the checker; structured results must equal the zeroed-channel oracle in onnxruntime,
recomputed here independently of the pipeline; sparse results must keep every surviving weight bit-exact.

CI runs a bounded, derandomized number of examples; ``tools/fuzz.py`` runs many more
(``ONNXPRUNE_FUZZ_EXAMPLES``, ``ONNXPRUNE_FUZZ_SEED``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from oracle_check import assert_close, run_ort, seeded_feeds
from random_models import random_model

from onnxprune.config import PruneConfig
from onnxprune.core.errors import OnnxPruneError
from onnxprune.pipeline import prune

EXAMPLES = int(os.environ.get("ONNXPRUNE_FUZZ_EXAMPLES", "30"))
#: CI: derandomized (same examples every run). tools/fuzz.py sets a seed to explore new ones.
FUZZ_SEED = os.environ.get("ONNXPRUNE_FUZZ_SEED")

settings.register_profile("onnxprune-fuzz", max_examples=EXAMPLES, derandomize=FUZZ_SEED is None, deadline=None,
                          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

UNRULED = "LpNormalization"  # normalizes across channels: treating it as elementwise would be wrong


def splice_unruled(model: onnx.ModelProto, position: int) -> tuple[onnx.ModelProto, str]:
    """Insert ``LpNormalization(axis=1)`` after the ``position``-th 4-D activation producer; rewire its readers."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    candidates = [i for i, n in enumerate(graph.node)
                  if n.op_type in ("Relu", "Conv", "Add", "Mul", "MaxPool", "Concat") and n.output[0] != "out"]
    index = candidates[position % len(candidates)]
    src = graph.node[index].output[0]
    new = f"{src}_lpnorm"
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == src:
                node.input[k] = new
    node = helper.make_node(UNRULED, [src], [new], name="fuzz_lpnorm", axis=1)
    graph.node.insert(index + 1, node)
    del graph.value_info[:]
    onnx.checker.check_model(out, full_check=True)
    return out, "fuzz_lpnorm"


@st.composite
def configs(draw: st.DrawFn) -> PruneConfig:
    mode = draw(st.sampled_from(["structured", "structured", "unstructured", "nm"]))
    if mode == "structured":
        return PruneConfig(
            mode=mode, ratio=draw(st.floats(0.0, 0.9)),
            importance=draw(st.sampled_from(["l1", "l2", "fpgm", "random"])),
            global_rank=draw(st.booleans()), round_to=draw(st.sampled_from([None, 1, 2, 3])),
            min_channels=draw(st.integers(1, 3)), seed=draw(st.integers(0, 99)))
    if mode == "unstructured":
        return PruneConfig(mode=mode, sparsity=draw(st.floats(0.0, 0.95)),
                           scope=draw(st.sampled_from(["layer", "global"])), sparse_storage=draw(st.booleans()))
    return PruneConfig(mode=mode, nm=draw(st.sampled_from(["1:2", "2:4", "1:4", "3:8"])))


@st.composite
def fuzz_cases(draw: st.DrawFn) -> tuple:
    model, kinds, head = draw(random_model())
    unruled = None
    if draw(st.booleans()):
        model, unruled = splice_unruled(model, draw(st.integers(0, 50)))
    return model, kinds, head, unruled, draw(configs())


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _seeded(test: Callable[..., None]) -> Callable[..., None]:
    return seed(int(FUZZ_SEED))(test) if FUZZ_SEED else test


@_seeded
@settings(settings.get_profile("onnxprune-fuzz"))
@given(fuzz_cases())
def test_pipeline_on_random_graphs(case: tuple) -> None:
    model, kinds, head, unruled, config = case
    context = f"blocks={kinds} head={head} unruled={unruled} config={config}"
    event(f"mode={config.mode}{' +sparse storage' if config.sparse_storage else ''}")
    event(f"unruled op={'yes' if unruled else 'no'}")
    before = model.SerializeToString()
    try:
        result = prune(model, config)
    except OnnxPruneError as exc:  # typed and one line; a valid model and valid options should not get here
        pytest.fail(f"{type(exc).__name__}: {exc} [{context}]")
    assert model.SerializeToString() == before, "prune() changed its input"
    feeds = seeded_feeds(model, seed=1)
    if config.mode == "structured":
        from onnxprune.structured.analysis import analyze
        from onnxprune.structured.oracle import zeroed_reference

        onnx.checker.check_model(result.model, full_check=True)
        dg = analyze(model)
        if unruled:
            touching = [g for g in dg.groups if any(UNRULED in b for b in g.blockers)]
            assert touching, f"no group blocked by {UNRULED} [{context}]"
            assert all(g.id not in result.plan.keep or len(result.plan.keep[g.id]) == g.size for g in touching)
        reference = zeroed_reference(model, dg, result.plan)
        assert_close(run_ort(result.model, feeds), run_ort(reference, feeds), what=context)
        assert result.report["validation"]["exact"]["passed"] is True
        return
    dense = result.model
    if config.sparse_storage:
        from onnxprune.sparse.storage import from_sparse_storage

        dense = from_sparse_storage(result.model)
    onnx.checker.check_model(dense, full_check=True)
    original, pruned = _weights(model), _weights(dense)
    for name, value in original.items():
        kept = pruned[name] != 0
        np.testing.assert_array_equal(pruned[name][kept], value[kept], err_msg=f"{name} changed [{context}]")
    run_ort(result.model, feeds)  # runs as saved (sparse storage included)
