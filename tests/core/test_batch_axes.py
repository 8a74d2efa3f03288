"""The channel groups, and so coverage and the cut, never depend on the batch size the user gives.

The dynamo exporter writes ``k.transpose(-2, -1)`` as ``Reshape [B, H, T, D] -> [-1, T, D]``, a Transpose and
a reshape back through a run-time target. At batch 1 the merged axis is the heads; at batch 2 it is ``B*H``
positions and the analysis blocked every head group (hf_vit_dynamo, hf_whisper_encoder_dynamo with
``--dim batch=2``). The analysis now pins dynamic batch axes to 1 (:mod:`onnxprune.core.batch_axes`); these
tests prove the groups are the same at batch 1, 2 and 3 and that the cut made at batch 2 is exact against the
oracle at batch 1, 2 and 3.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from attention_builders import dynamo_key_transpose
from oracle_check import assert_close, run_ort

import onnxprune as op
from onnxprune.core.batch_axes import analysis_dims, batch_like, counted_batch
from onnxprune.core.io import load_model
from onnxprune.structured.analysis import analyze
from onnxprune.structured.attention import attention_heads
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.plan import make_plan
from onnxprune.structured.surgery import apply_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import real_exports_table as real  # noqa: E402


def _groups(dg) -> list[tuple[int, tuple[str, ...]]]:
    return [(g.size, g.blockers) for g in dg.groups]


def _batches(feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """``n`` samples cycled from ``feeds`` (a batch-2 or batch-3 copy of the example inputs)."""
    return {k: np.concatenate([v] * n)[:n] if len(v) < n else v[:n] for k, v in feeds.items()}


def _prove(model: onnx.ModelProto, dims: dict[str, int], feeds: dict[str, np.ndarray]) -> None:
    """Analyse and cut at ``dims``; the cut equals the oracle at batch 1, 2 and 3; same groups as at batch 1."""
    dg = analyze(model, dims=dims)
    assert _groups(dg) == _groups(analyze(model)), "the groups changed with the batch size"
    heads = [g for g in dg.prunable_groups if attention_heads(g)]
    assert heads, dg.summary()
    plan = make_plan(model, dg, ratio=0.5)
    pruned, reference = apply_plan(model, plan, dg=dg), zeroed_reference(model, dg, plan)
    for n in (1, 2, 3):
        case = _batches(feeds, n)
        assert_close(run_ort(pruned, case), run_ort(reference, case), 1e-4, f"batch {n}")


def test_batch_like_axes() -> None:
    assert batch_like(0, 3, "batch") and batch_like(0, 4, None) and batch_like(1, 3, "N")
    assert not batch_like(0, 3, "sequence") and not batch_like(1, 3, "T") and not batch_like(0, 1, None)


def test_a_short_batch_name_after_a_batch_axis_counts_points() -> None:
    """``[B, N, 3]`` is a point cloud: its N is points, not a second batch; ``[T, N, C]`` is time-major."""
    assert not batch_like(1, 3, "N", ["B"]) and not batch_like(1, 3, "N", [None])
    assert batch_like(1, 3, "N", ["time"]) and batch_like(1, 3, "batch", ["B"])


def _input_model(shape: list[int | str]) -> onnx.ModelProto:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return onnx.helper.make_model(graph)


def test_a_point_count_the_user_gives_is_kept_for_the_analysis() -> None:
    """``--dim N=1024`` on ``[B, N, 3]`` must reach the analysis; only B is pinned to 1."""
    dims = analysis_dims(_input_model(["B", "N", 3]), {"N": 1024, "B": 4})
    assert dims["N"] == 1024 and dims["B"] == 1 and "x:1" not in dims


@pytest.mark.parametrize(("shape", "dims", "expected"), [
    (["batch", 3], {"batch": 2}, 2), (["batch", 3], {"x:0": 5}, 5), (["batch", 3], None, 1),
    ([4, 3], {"batch": 2}, 4), (["B", "N", 3], {"N": 1024}, 1)])
def test_counted_batch_is_the_batch_the_counts_use(shape: list[int | str], dims: dict[str, int] | None,
                                                   expected: int) -> None:
    assert counted_batch(_input_model(shape), dims) == expected


def test_analysis_dims_pin_only_dynamic_batch_axes() -> None:
    model = dynamo_key_transpose()
    assert analysis_dims(model, {"batch": 4, "other": 7}) == {"batch": 1, "other": 7, "x:0": 1, "x:batch": 1}


@pytest.mark.parametrize("batch", [2, 3])
def test_dynamo_key_transpose_heads_prunable_at_any_batch(batch: int) -> None:
    """The hand-built dynamo pattern: heads stay prunable at batch 2 and 3, and the cut is exact at 1, 2, 3."""
    model = dynamo_key_transpose()
    feeds = {"x": np.random.default_rng(0).standard_normal((batch, 5, 8)).astype(np.float32)}
    _prove(model, {"batch": batch}, feeds)


def test_prune_with_batch_two_data_keeps_head_coverage(tmp_path: Path) -> None:
    """Through ``prune``: ``--dim batch=2`` and batch-2 data cut the heads and prove the cut, as at batch 1."""
    model = dynamo_key_transpose()
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((2, 5, 8)).astype(np.float32))
    results = [op.prune(model, op.PruneConfig(ratio=0.5, round_to=1, bench=False, validation_data=str(data),
                                             dims=dims)) for dims in ({}, {"batch": 2})]
    reports = [r.report for r in results]
    assert reports[0]["coverage"] == reports[1]["coverage"] > 0
    assert results[1].plan.keep == results[0].plan.keep
    assert onnx.numpy_helper.to_array(results[1].model.graph.initializer[0]).shape == (8, 4)


@pytest.mark.parametrize("name", ["hf_vit_dynamo", "hf_whisper_encoder_dynamo"])
def test_cached_dynamo_export_at_batch_two(name: str) -> None:
    """The real exports the defect was found on (skipped without the cache folder)."""
    path = real.export_dir() / f"{name}.onnx"
    inputs = path.with_suffix(".inputs.npz")
    if not path.is_file() or not inputs.is_file():
        pytest.skip(f"no {path.name} with its inputs in {path.parent} (tools/export_real.py writes it)")
    feeds = dict(np.load(inputs))
    _prove(load_model(path), {"batch": 2}, _batches(feeds, 2))
