"""A residual stream that is the graph output (an encoder's last hidden state) pruned in width mode.

The stream is kept at the output's width by an appended projection: the model's output keeps its shape
while the interior stream shrinks; the rotation (pre-norm) is exact before slicing; dynamic batch and
sequence axes survive. Every check runs the models in onnxruntime at two batch sizes and sequence lengths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxprune.core.ir import GraphIndex
from onnxprune.core.stats import model_stats
from onnxprune.recovery.slicegpt import prune_stream_width, slice_stream
from onnxprune.runtime.session import create_session, run_session
from tests.builders import GraphBuilder, vinfo

D_IN, D, HIDDEN = 6, 16, 24
SIZES = ((1, 5), (3, 9))  # (batch, sequence): two of each, none of them the calibration's


def encoder(*, post_norm: bool, seed: int = 0, blocks: int = 2, gelu_entry: bool = False) -> onnx.ModelProto:
    """``x [B, S, 6]`` → embedding into a width-16 stream → ``blocks`` × (single-head self-attention, FFN),
    pre-norm (``x + f(LN(x))``, a final LN) or post-norm (``LN(x + f(x))``, BERT's order); the last LN's
    output is the graph output ``hidden [B, S, 16]``. LayerNorm scales and shifts random. ``gelu_entry``: the
    embedding is ``GELU(x W + b)``, as Whisper's encoder writes its stream (a nonlinear writer)."""
    g = GraphBuilder(seed)

    def ln(x: str, out: str | None = None) -> str:
        ins = [x, g.weight((D,), "gamma", low=0.5), g.weight((D,), "beta")]
        if out is None:
            return g.op("LayerNormalization", ins, axis=-1)
        g.nodes.append(helper.make_node("LayerNormalization", ins, [out], name="final_norm", axis=-1))
        return out

    def linear(x: str, n_in: int, n_out: int) -> str:
        return g.op("Add", [g.op("MatMul", [x, g.weight((n_in, n_out))]), g.weight((n_out,), "b")])

    def attention(n: str) -> str:
        q, k, v = (linear(n, D, D) for _ in range(3))
        s = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])])
        p = g.op("Softmax", [g.op("Mul", [s, g.const(np.array(D ** -0.5, np.float32))])], axis=-1)
        return linear(g.op("MatMul", [p, v]), D, D)

    def ffn(n: str) -> str:
        return linear(g.op("Relu", [linear(n, D, HIDDEN)]), HIDDEN, D)

    x = linear("x", D_IN, D)
    if gelu_entry:
        x = g.op("Gelu", [x]) if g.opset >= 20 else g.op("Mul", [x, g.op("Sigmoid", [g.op("Mul", [
            x, g.const(np.array(1.702, np.float32))])])])
    for b in range(blocks):
        last = b == blocks - 1
        if post_norm:
            x = ln(g.op("Add", [x, attention(x)]))
            x = ln(g.op("Add", [x, ffn(x)]), "hidden" if last else None)
        else:
            x = g.op("Add", [x, attention(ln(x))])
            x = g.op("Add", [x, ffn(ln(x))])
    if not post_norm:
        ln(x, "hidden")
    return g.build([vinfo("x", ["B", "S", D_IN])], [vinfo("hidden", ["B", "S", D])])


def _calib(seed: int = 1) -> list[dict[str, np.ndarray]]:
    r = np.random.default_rng(seed)
    return [{"x": r.standard_normal((16, 7, D_IN)).astype(np.float32)} for _ in range(2)]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return run_session(create_session(model), {"x": x})["hidden"]


def _inputs(seed: int = 5) -> list[np.ndarray]:
    r = np.random.default_rng(seed)
    return [r.standard_normal((b, s, D_IN)).astype(np.float32) for b, s in SIZES]


def _dynamic(model: onnx.ModelProto) -> list[list[str]]:
    return [[d.dim_param for d in v.type.tensor_type.shape.dim[:2]] for v in (*model.graph.input, *model.graph.output)]


def _projection_weight(model: onnx.ModelProto, node_name: str) -> tuple[int, ...]:
    idx = GraphIndex(model)
    (node,) = [n for n in model.graph.node if n.name == node_name]
    return tuple(idx.initializers[node.input[1]].dims)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_prenorm_stream_output_is_rotated_exactly_then_sliced_keeping_the_output_width() -> None:
    model = encoder(post_norm=False)
    result = slice_stream(model, ratio=0.25, calib=_calib(), refit=False)
    (proj,) = result.report["outputs_kept_full_width"]
    assert proj["output"] == "hidden" and proj["width"] == D and result.report["width_after"] == 12
    # the appended projection maps the 12 kept directions back to the output's 16 channels
    assert _projection_weight(result.model, proj["projection"]) == (12, D)
    assert _projection_weight(result.rotated, proj["projection"]) == (D, D)
    for m in (result.model, result.rotated):
        onnx.checker.check_model(m, full_check=True)
        assert _dynamic(m) == [["B", "S"], ["B", "S"]]
    unsliced = slice_stream(model, ratio=0.0, calib=_calib(), refit=False).model
    for x in _inputs():
        ref = _run(model, x)
        tol = 1e-5 * np.abs(ref).max()
        np.testing.assert_allclose(_run(result.rotated, x), ref, atol=tol, rtol=0)  # the rotation is exact
        np.testing.assert_allclose(_run(unsliced, x), ref, atol=tol, rtol=0)  # ratio 0: nothing lost
        out = _run(result.model, x)
        assert out.shape == ref.shape == (x.shape[0], x.shape[1], D)
        assert _cos(out, ref) > 0.9
    assert model_stats(result.model).params < model_stats(model).params


def test_postnorm_stream_output_is_cut_plainly_and_refitted_keeping_the_output_width() -> None:
    model = encoder(post_norm=True)
    pruned, prepared, report = prune_stream_width(model, ratio=0.25, calib=_calib(), refit=True)
    assert report["method"] == "plain" and prepared is not None  # post-norm: no rotation; the rewrites kept
    assert [(s["width_before"], s["width_after"]) for s in report["streams"]] == [(D, 12)]
    (proj,) = report["outputs_kept_full_width"]
    assert proj["output"] == "hidden" and _projection_weight(pruned, proj["projection"]) == (12, D)
    fit = {f["layer"]: f for f in report["refit"]}[proj["projection"]]  # re-fitted with the other readers
    assert fit["rel_error_after"] < 0.5 * fit["rel_error_before"]
    sliced, _, plain = prune_stream_width(model, ratio=0.25, calib=_calib(), refit=False)
    # counted against the input: the projection's 16 x 16 weights are new, 12 x 16 of them stay
    assert model_stats(model).params - model_stats(sliced).params == plain["params_removed_predicted"]
    unpruned, _, _ = prune_stream_width(model, ratio=0.0, calib=_calib(), refit=False)
    onnx.checker.check_model(pruned, full_check=True)
    assert _dynamic(pruned) == [["B", "S"], ["B", "S"]]
    for x in _inputs():
        ref = _run(model, x)
        np.testing.assert_allclose(_run(prepared, x), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)  # before the cut
        np.testing.assert_allclose(_run(unpruned, x), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
        out = _run(pruned, x)
        assert out.shape == ref.shape == (x.shape[0], x.shape[1], D)
        assert _cos(out, ref) > 0.9


def test_width_mode_cli_keeps_the_output_and_proves_the_rotation(tmp_path: Path) -> None:
    """Through ``onnxprune prune --mode width``: the rotation check passes, the output keeps its shape at other
    batch and sequence sizes, and the appended projection's MACs are in ``macs_after``."""
    import json

    from onnxprune.cli.main import main

    src, out, rep, calib = (tmp_path / n for n in ("enc.onnx", "out.onnx", "r.json", "calib.npz"))
    onnx.save(encoder(post_norm=False), src)
    np.savez(calib, x=np.concatenate([c["x"] for c in _calib()]))
    assert main(["prune", str(src), "-o", str(out), "--mode", "width", "--ratio", "0.25", "--calib", str(calib),
                 "--report", str(rep), "-q"]) == 0
    report = json.loads(rep.read_text())
    width = report["width"]
    assert width["method"] == "rotate" and width["rotation_check"]["passed"] is True
    assert [p["output"] for p in width["outputs_kept_full_width"]] == ["hidden"]
    pruned = onnx.load(out)
    (node,) = [n for n in pruned.graph.node if n.name == width["outputs_kept_full_width"][0]["projection"]]
    dims = {d["name"] or f"{d['input']}:{d['axis']}": d["value"] for d in report["dims_assumed"]}
    stats = model_stats(pruned, dims=dims)
    assert stats.macs == report["macs_after"] and stats.macs_by_node[node.name] > 0  # the projection counted
    for x in _inputs():
        assert _run(pruned, x).shape == (x.shape[0], x.shape[1], D)


def test_width_mode_keeps_grouped_query_heads_prunable() -> None:
    """Llama's ``repeat_kv`` reads the number of KV heads back from the shape into an Expand target: width
    mode's preparation leaves such reads at run time and Expands of activations to the default rule, so the
    KV groups stay a prunable group in the model it analyses and returns (before: the read frozen into a
    constant target, or the stream's Expand rule, blocked them)."""
    from onnxprune.recovery.width import frozen_stream
    from onnxprune.structured.analysis import analyze
    from onnxprune.structured.stream import stream_rules
    from tests.structured.test_shape_reads import attention

    model = attention(d=16, heads=4, kv_heads=2)
    dg = analyze(frozen_stream(model).model, extra_rules=stream_rules(), dims={"B": 1, "T": 5})
    assert [g.size for g in dg.prunable_groups if g.size == 2], [g.blockers for g in dg.groups]


def test_width_view_separates_the_interface_from_what_blocks_the_stream() -> None:
    """``width_view``: the stream output projected (its MACs in the total), the first layer's input channels
    (a graph input) and the projection's output channels reported as interface, and both coverages given."""
    from onnxprune.recovery.stream_view import width_view

    view = width_view(encoder(post_norm=True), dims={"B": 1, "S": 7})
    assert [p["output"] for p in view["outputs_kept_full_width"]] == ["hidden"]
    assert view["projection_share"] > 0
    reasons = {(u["side"], u["interface"]) for u in view["uncovered"]}
    assert ("in", True) in reasons and ("out", True) in reasons  # x's 6 channels; the output's 16
    # what stays is the interface and the single-head q·kᵀ (no head split to cut it by): never the stream
    assert all(u["interface"] or "contracts two activations" in u["reason"] for u in view["uncovered"])
    iface = sum(u["share"] for u in view["uncovered"] if u["interface"])
    assert abs(view["interface_share"] - iface) < 1e-5
    assert abs(view["coverage_without_interface"] - view["coverage"] / (1 - iface)) < 1e-5


def test_width_mode_cli_proves_the_rewrites_of_a_post_norm_model(tmp_path: Path) -> None:
    """Plain pruning (post-norm) has no rotation to prove, but its exact rewrites (the output projection, frozen
    shape reads) are proven against the input in the run: ``width.rewrite_check``."""
    import json

    from onnxprune.cli.main import main

    src, out, rep, calib = (tmp_path / n for n in ("enc.onnx", "out.onnx", "r.json", "calib.npz"))
    onnx.save(encoder(post_norm=True), src)
    np.savez(calib, x=np.concatenate([c["x"] for c in _calib()]))
    assert main(["prune", str(src), "-o", str(out), "--mode", "width", "--ratio", "0.25", "--calib", str(calib),
                 "--report", str(rep), "-q"]) == 0
    width = json.loads(rep.read_text())["width"]
    assert width["method"] == "plain" and width["rewrite_check"]["passed"] is True
    assert "rotation_check" not in width


def test_analyze_says_what_width_mode_reaches(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """``onnxprune analyze`` prints width mode's coverage both ways and the output kept by a projection."""
    from onnxprune.cli.main import main

    src = tmp_path / "enc.onnx"
    onnx.save(encoder(post_norm=True), src)
    assert main(["analyze", str(src)]) == 0
    out = capsys.readouterr().out
    assert "width mode (--mode width, not exact): coverage" in out and "without interface sides" in out
    assert "output hidden is the stream: kept at width 16 by an appended projection" in out


def test_analyze_leaves_width_mode_to_a_flag_above_the_size_limit(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Above ``WIDTH_VIEW_BYTES`` of weights the width view (two copies of the model) is shown only when asked."""
    from onnxprune.report import inspect

    model = encoder(post_norm=True)
    monkeypatch.setattr(inspect, "WIDTH_VIEW_BYTES", 1000)  # the encoder holds ~16 kB of weights
    assert "skipped" in inspect.analyze_summary(model)["width"]
    assert inspect.analyze_summary(model, with_width=True)["width"]["coverage"] > 0.5


def test_a_stream_written_by_a_nonlinearity_starts_at_an_appended_projection_and_is_rotated() -> None:
    """Whisper's stream is ``GELU(conv(x))``: a rotation cannot cross the GELU, so the stream now starts at an
    identity projection appended after it, and the model is rotated (exactly) and sliced instead of falling
    back to plain pruning; its output keeps its width (the other projection)."""
    model = encoder(post_norm=False, gelu_entry=True)
    pruned, rotated, report = prune_stream_width(model, ratio=0.25, calib=_calib(), refit=False)
    assert report["method"] == "rotate", report.get("why_not_rotated")
    (entry,) = report["stream_entries"]
    assert _projection_weight(pruned, entry["projection"]) == (D, 12)  # full width in, the 12 kept out
    assert rotated is not None
    for x in _inputs():
        ref = _run(model, x)
        np.testing.assert_allclose(_run(rotated, x), ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
        assert _run(pruned, x).shape == ref.shape
