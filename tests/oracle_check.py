"""Test helper: run models in onnxruntime (and the reference evaluator) and compare outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator

_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.DOUBLE: np.float64}


def seeded_feeds(model: onnx.ModelProto, seed: int = 0, dims: dict | None = None) -> dict[str, np.ndarray]:
    """Standard-normal inputs for every real graph input (symbolic dims from ``dims``, else 2)."""
    r = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else (dims or {}).get(d.dim_param, 2)
                 for d in vi.type.tensor_type.shape.dim]
        dtype = _NP[vi.type.tensor_type.elem_type]
        feeds[vi.name] = r.standard_normal(shape).astype(dtype)
    return feeds


def run_ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_close(a: list[np.ndarray], b: list[np.ndarray], tol: float = 1e-4, what: str = "") -> None:
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.shape == y.shape, f"{what} output {k}: shape {x.shape} != {y.shape}"
        scale = max(1.0, float(np.max(np.abs(y))) if y.size else 1.0)
        diff = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
        assert diff <= tol * scale, f"{what} output {k}: max abs diff {diff:.3g} > {tol} x scale {scale:.3g}"


def assert_equivalent(model: onnx.ModelProto, pruned: onnx.ModelProto, reference: onnx.ModelProto, *,
                      seed: int = 0, tol: float = 1e-4, evaluator: bool = True) -> None:
    """``pruned`` equals the zeroed ``reference`` (onnxruntime and, for small models, ReferenceEvaluator).

    Also checks that the pruned model passes the full checker and keeps the original inputs/outputs.
    """
    onnx.checker.check_model(pruned, full_check=True)
    assert [(i.name, i.type) for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}] \
        == [(i.name, i.type) for i in pruned.graph.input if i.name not in {t.name for t in pruned.graph.initializer}]
    assert [(o.name, o.type) for o in model.graph.output] == [(o.name, o.type) for o in pruned.graph.output]
    feeds = seeded_feeds(model, seed)
    got = run_ort(pruned, feeds)
    want = run_ort(reference, feeds)
    assert_close(got, want, tol, "onnxruntime")
    if evaluator:
        ref_got = ReferenceEvaluator(pruned).run(None, feeds)
        assert_close(ref_got, want, tol * 10, "ReferenceEvaluator")


def random_plan(model: onnx.ModelProto, dg, seed: int = 0):
    """A random keep set for every prunable group that empties no layer (not an importance ranking)."""
    from onnxprune.structured.plan import PrunePlan, keep_every_source

    r = np.random.default_rng(seed)
    keep, sizes = {}, {}
    for g in dg.prunable_groups:
        k = int(r.integers(1, g.size + 1))
        keep[g.id] = keep_every_source(g, np.sort(r.choice(g.size, size=k, replace=False)))
        sizes[g.id] = g.size
    return PrunePlan(fingerprint=dg.fingerprint, keep=keep, sizes=sizes, criterion="random-keep")


def check_prune(model: onnx.ModelProto, *, ratio: float = 0.5, plan=None, evaluator: bool = True,
                min_prunable: int = 1, grouped_conv: str = "within", **options):
    """Analyse, plan (or use ``plan``), cut, and prove: oracle equivalence and exact parameter drop.

    Returns (dg, plan, pruned) for further assertions.
    """
    from onnxprune.core.stats import count_params
    from onnxprune.structured.analysis import analyze
    from onnxprune.structured.oracle import zeroed_reference
    from onnxprune.structured.plan import make_plan
    from onnxprune.structured.surgery import apply_plan

    before = model.SerializeToString()
    dg = analyze(model, grouped_conv=grouped_conv)
    assert len(dg.prunable_groups) >= min_prunable, dg.summary()
    if plan is None:
        plan = make_plan(model, dg, ratio=ratio, **options)
    elif plan == "random":
        plan = random_plan(model, dg, options.get("seed", 0))
    pruned = apply_plan(model, plan, dg=dg)
    reference = zeroed_reference(model, dg, plan)
    assert_equivalent(model, pruned, reference, evaluator=evaluator)
    assert count_params(model) - count_params(pruned) == dg.params_removed(plan.keep)
    assert model.SerializeToString() == before, "the input model was modified"
    return dg, plan, pruned


def sandwich(middle, *, c: int = 6, c_mid: int | None = None, hw: int = 5, opset: int = 17, seed: int = 0,
             c_in: int = 3) -> onnx.ModelProto:
    """x → Conv(c) → ``middle(g, y) -> z`` → Conv 1x1 (c_mid → 4) → out: a source, the op under test, a sink."""
    import builders
    from onnx import helper

    g = builders.GraphBuilder(seed, opset)
    y = g.conv("x", c_in, c)
    z = middle(g, y)
    g.nodes.append(helper.make_node("Conv", [z, g.weight((4, c_mid or c, 1, 1))], ["out"], name="sink"))
    return g.build([builders.vinfo("x", [1, c_in, hw, hw])], [builders.vinfo("out", [1, 4, "H", "W"])])


def first_group(model: onnx.ModelProto):
    """The group of the first layer's output channels (the 'middle' of a sandwich)."""
    from onnxprune.structured.analysis import analyze

    dg = analyze(model)
    return dg, dg.groups[0]


def prove_random_cuts(model: onnx.ModelProto, seeds=range(3), evaluator: bool = True) -> None:
    """Several random keep sets, each proven against the oracle."""
    for seed in seeds:
        check_prune(model, plan="random", seed=seed, evaluator=evaluator)
