"""--round-to auto: widths chosen from a latency table, predictions from it, the user cache and --no-cache.

The table's timer is a parameter of our own code (``LatencyModel(timer=...)``): a deterministic kernel-cost
model makes the choice checkable; the end-to-end tests use real onnxruntime timing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from builders import conv_relu_conv

from onnxprune import PruneConfig, prune
from onnxprune.cli.main import main
from onnxprune.runtime.latency import LatencyCache, model_of
from onnxprune.speed import LatencyModel
from onnxprune.structured.analysis import analyze

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _macs_timer(slow_step: int | None = None):
    """ms = the layer's weight size (MACs per pixel), 3x when its output width is not a multiple of slow_step."""
    def timer(models):
        out = []
        for m in map(model_of, models):
            w = next(t for t in m.graph.initializer if len(t.dims) == 4)
            slow = slow_step is not None and w.dims[0] % slow_step
            out.append(math.prod(w.dims) * (3.0 if slow else 1.0) / 1000)
        return out
    return timer


def _model_and_group(c_mid: int = 64):
    model = conv_relu_conv(c_in=8, c_mid=c_mid, c_out=16, hw=8, batch=1)
    dg = analyze(model)
    return model, dg, next(g for g in dg.groups if g.prunable and g.size == c_mid)


def test_chooser_takes_the_fast_width_near_the_ask():
    model, dg, g = _model_and_group()
    # 41 of 64: candidates 40 (one channel under the ask, within 3% of the group) and 48
    lm = LatencyModel(model, dg, batches=(1,), dims={}, timer=_macs_timer(16), cache=LatencyCache(None))
    assert lm.choose(g, 41) == 48  # 40 hits the slow path (not a multiple of 16 here); 48 does not
    assert lm.report()["choices"][str(g.id)]["timed"] is True
    lm = LatencyModel(model, dg, batches=(1,), dims={}, timer=_macs_timer(None), cache=LatencyCache(None),
                      context=True)
    assert lm.choose(g, 41) == 40  # time proportional to width: the narrower is faster

    def odd_is_much_faster(models):
        return [0.5 if next(t for t in m.graph.initializer if len(t.dims) == 4).dims[0] == 45 else 1.0
                for m in map(model_of, models)]

    fast_odd = LatencyModel(model, dg, batches=(1,), dims={}, timer=odd_is_much_faster, cache=LatencyCache(None),
                            context=True)
    assert fast_odd.choose(g, 45) == 48  # widths are chosen among multiples of 8 when the candidates hold one
    assert fast_odd.choose(_model_and_group(c_mid=6)[2], 3) == 3  # none does: the asked width
    flat = LatencyModel(model, dg, batches=(1,), dims={}, timer=lambda ms: [1.0] * len(ms), cache=LatencyCache(None),
                        context=True)
    assert flat.choose(g, 41) == 40  # a tie goes to the width nearest the ask


def test_prediction_multiplies_each_layers_factors():
    model, dg, g = _model_and_group()
    lm = LatencyModel(model, dg, batches=(1,), dims={}, timer=_macs_timer(None), cache=LatencyCache(None))
    # conv1 8x64x3x3 = 4608, conv2 16x64x1x1 = 1024; keeping 32 of 64 halves both
    sp = lm.predict_speedup({g.id: 32})
    assert sp[1] == pytest.approx(2.0)
    assert lm.relative_cost(g.id, 32) == pytest.approx(0.5)


def _three_convs():
    from builders import conv_chain

    return conv_chain(8, 32, 32)


def test_a_layer_cut_on_both_sides_gets_both_factors():
    model = _three_convs()
    dg = analyze(model)
    groups = [g for g in dg.groups if g.prunable]
    assert [g.size for g in groups] == [32, 32]
    lm = LatencyModel(model, dg, batches=(1,), dims={}, timer=_macs_timer(None), cache=LatencyCache(None))
    # full 2304 + 9216 + 512; keeping 16 of both groups: 1152 + 2304 (both factors 0.5) + 256
    assert lm.predict_speedup({g.id: 16 for g in groups})[1] == pytest.approx(12032 / 3712)


def test_budget_spent_falls_back_to_multiples_of_8():
    model, dg, g = _model_and_group()
    lm = LatencyModel(model, dg, batches=(1,), dims={}, timer=_conv_cost_timer(16), cache=LatencyCache(None),
                      budget_s=0, context=True)
    assert lm.choose(g, 41) == 48 and lm.report()["groups_untimed"] == [g.id]
    assert lm.report()["choices"][str(g.id)]["timed"] is False


def test_prune_reports_the_table_and_reuses_the_cache(tmp_path, monkeypatch):
    import onnxprune.runtime.kernels as kernels

    monkeypatch.setenv("ONNXPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    # widths in multiples of 8, as on a CPU without AVX-512: two candidates per group get timed (in multiples
    # of 16 this model's groups have one each, and nothing would be timed)
    monkeypatch.setattr(kernels, "_cpu_flags", lambda: frozenset())
    model = str(ROOT / "models" / "digits_cnn.onnx")
    first = prune(model, PruneConfig(ratio=0.4, bench=False))
    lat = first.report["latency"]
    assert lat["timed_as"] == "whole model, one group cut"
    assert lat["layers_timed"] > 0 and lat["cache"] and len(list((tmp_path / "cache").iterdir())) == 1
    assert {c["chosen"] for c in lat["choices"].values()} and all(
        c["chosen"] >= c["asked"] - 2 for c in lat["choices"].values())
    second = prune(model, PruneConfig(ratio=0.4, bench=False))
    assert second.report["latency"]["layers_cached"] > 0
    if not lat["groups_untimed"]:  # the 2 s budget sufficed (a loaded machine may cut it short)
        assert second.report["latency"]["layers_timed"] == 0
        widths = [(g["size_before"], g["size_after"]) for g in first.report["groups"]]
        assert widths == [(g["size_before"], g["size_after"]) for g in second.report["groups"]]  # same table
    assert all(np.isfinite(p["predicted_speedup"]) for p in lat["prediction"])


def test_no_cache_writes_no_table(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "o.onnx"
    assert main(["prune", str(ROOT / "models" / "digits_cnn.onnx"), "-o", str(out), "--no-cache", "--no-bench",
                 "-q"]) == 0
    assert out.exists() and not (tmp_path / "cache").exists()


def test_bench_reports_prediction_and_measurement(tmp_path):
    result = prune(str(ROOT / "models" / "digits_cnn.onnx"), PruneConfig(ratio=0.3, allow_slower=True))
    assert "bench" in result.report  # small model: benchmarked by default
    rows = result.report["latency"]["prediction"]
    assert [r["batch"] for r in rows] == [1, 8]
    assert all("measured_speedup" in r and "error" in r for r in rows)
    assert {v["batch"] for v in result.report["speed"]["verdicts"]} == {1, 8}


def test_round_to_flag_takes_auto_or_an_integer(tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["prune", str(ROOT / "models" / "digits_cnn.onnx"), "-o", str(out), "--round-to", "fast"]) == 2
    assert "neither auto nor an integer" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("dims", [{}, {"N": 1}, {"x:0": 1}])
def test_each_batch_is_timed_at_its_own_shapes(dims):
    """A resolved batch size (by name or by position) must not pin every batch's layers to it."""
    model = conv_relu_conv(c_in=8, c_mid=64, c_out=16, hw=8, batch="N")
    dg = analyze(model)
    g = next(g for g in dg.groups if g.prunable)
    seen = []

    def timer(models):
        seen.extend(m.graph.input[0].type.tensor_type.shape.dim[0].dim_value for m in models)
        return [1.0] * len(models)

    LatencyModel(model, dg, batches=(1, 8), dims=dims, timer=timer, cache=LatencyCache(None)).choose(g, 40)
    assert sorted(set(seen)) == [1, 8]


def test_target_speedup_finds_the_lowest_ratio_that_reaches_it():
    from onnxprune.speed_target import ratio_for_target

    model = _three_convs()
    dg = analyze(model)
    lm = LatencyModel(model, dg, batches=(1,), dims={}, timer=_macs_timer(None), cache=LatencyCache(None))
    full = 2304 + 9216 + 512  # ms of the layers at full width (the timer's units): the whole model here
    cfg = PruneConfig(target_speedup=2.0, round_to=1, bench_batches=(1,))
    ratio, info = ratio_for_target(model, dg, cfg, lm, original_ms=full / 1000)
    assert info["predicted_speedup"] >= 2.0 and 0 < ratio < 0.95
    from onnxprune.speed import keep_counts
    from onnxprune.structured.plan import make_plan

    below = make_plan(model, dg, ratio=max(0.0, ratio - 0.02), round_to=1)
    assert lm.predict_speedup(keep_counts(below), {1: full / 1000})[1] < 2.0  # and no lower ratio does
    # --target-latency: half the original's latency is the same budget
    ratio2, info2 = ratio_for_target(model, dg, PruneConfig(target_latency=full / 2000, round_to=1,
                                                            bench_batches=(1,)), lm, original_ms=full / 1000)
    assert ratio2 == ratio and info2["target_speedup"] == pytest.approx(2.0)


def test_unreachable_target_is_refused_in_one_line():
    from onnxprune.core.errors import ConfigError
    from onnxprune.speed_target import ratio_for_target

    model = _three_convs()
    dg = analyze(model)
    lm = LatencyModel(model, dg, batches=(1,), dims={}, timer=_macs_timer(None), cache=LatencyCache(None))
    with pytest.raises(ConfigError, match=r"^a 1000.00x speedup is out of reach"):
        ratio_for_target(model, dg, PruneConfig(target_speedup=1000.0, round_to=1, bench_batches=(1,)), lm,
                         original_ms=12.0)


@pytest.mark.parametrize(("options", "match"), [
    (dict(target_speedup=0.5), r"target_speedup must be >= 1"),
    (dict(target_latency=-1.0), r"target_latency must be > 0"),
    (dict(latency_budget=-1.0), r"latency_budget must be >= 0 seconds"),
    (dict(target_speedup=2.0, target_macs=0.5), r"cannot be used together"),
    (dict(target_speedup=2.0, target_latency=3.0), r"cannot be used together"),
    (dict(mode="unstructured", target_speedup=2.0), r"target_speedup does not apply to mode='unstructured'"),
])
def test_latency_budget_options_are_checked(options, match):
    from onnxprune.core.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        PruneConfig(**options)


def test_target_speedup_end_to_end_reports_the_ratio(tmp_path):
    """Real timing of a tiny model: the target is found, or refused in one line (a loaded machine's noise)."""
    from onnxprune.core.errors import ConfigError

    try:
        result = prune(str(ROOT / "models" / "digits_cnn.onnx"),
                       PruneConfig(target_speedup=1.2, bench_batches=(8,), allow_slower=True))
    except ConfigError as exc:
        assert "out of reach" in str(exc) and "(batch 8)" in str(exc) and "\n" not in str(exc)
        return
    target = result.report["latency_target"]
    assert target["batch"] == 8 and target["group_ratios"]
    assert target["allocation"].startswith("data-free") and target["checks"]
    assert all(0 < r <= 0.9 for r in target["group_ratios"].values())
    # The closed loop keeps the plan measured nearest the target (its prediction may be below the target:
    # the loop corrects what it asks of the prediction from the measurements), and reports that plan's pair.
    checks = target["checks"]
    assert checks[0]["goal_speedup"] <= 1.2 and all(c["measured_speedup"] for c in checks)
    cutting = [c for c in checks if c["predicted_speedup"] > 1] or checks  # a plan that cuts nothing is no answer
    nearest = min(cutting, key=lambda c: abs(math.log(c["measured_speedup"] / 1.2)))
    assert (target["predicted_speedup"], target["measured_speedup"]) == (nearest["predicted_speedup"],
                                                                        nearest["measured_speedup"])


def test_no_budget_means_widths_rounded_up_to_8():
    result = prune(str(ROOT / "models" / "digits_cnn.onnx"),
                   PruneConfig(ratio=0.3, latency_budget=0.0, latency_cache=False, bench=False))
    choices = result.report["latency"]["choices"].values()
    assert choices and not any(c["timed"] for c in choices)
    assert all(g["size_after"] % 8 == 0 for g in result.report["groups"])


def test_untimed_groups_are_predicted_from_macs():
    model = _three_convs()
    dg = analyze(model)
    groups = [g for g in dg.groups if g.prunable]
    lm = LatencyModel(model, dg, batches=(1,), dims={}, timer=_macs_timer(None), cache=LatencyCache(None),
                      budget_s=0)
    # nothing timed: every layer weighs its MACs and scales by kept/size in each group that cuts it
    assert lm.predict_speedup({g.id: 16 for g in groups}, {1: 5.0})[1] == pytest.approx(12032 / 3712)
    # one group timed (the first), the other not: its layers' time per MAC prices the untimed layer
    timed = LatencyModel(model, dg, batches=(1,), dims={}, timer=_macs_timer(None), cache=LatencyCache(None))
    timed.choose(groups[0], 16)
    timed.budget_s = 0
    assert timed.predict_speedup({g.id: 16 for g in groups})[1] == pytest.approx(12032 / 3712)


def _conv_cost_timer(slow_step: int | None = None):
    """Whole models: ms = sum over Convs of the weight size, 3x for an output width off multiples of slow_step."""
    def timer(models):
        out = []
        for m in map(model_of, models):
            inits = {t.name: list(t.dims) for t in m.graph.initializer}
            total = 0.0
            for node in m.graph.node:
                if node.op_type == "Conv":
                    dims = inits[node.input[1]]
                    total += math.prod(dims) * (3.0 if slow_step and dims[0] % slow_step else 1.0)
            out.append(total / 1000)
        return out
    return timer


def test_context_mode_times_the_whole_model_with_one_group_cut():
    model, dg, g = _model_and_group()
    lm = LatencyModel(model, dg, batches=(1, 8), dims={}, timer=_conv_cost_timer(16), cache=LatencyCache(None),
                      context=True)
    assert lm.choose(g, 45) == 48
    assert lm.report()["timed_as"] == "whole model, one group cut"
    three = _three_convs()
    dg3 = analyze(three)
    groups = [x for x in dg3.groups if x.prunable]
    lm3 = LatencyModel(three, dg3, batches=(1,), dims={}, timer=_conv_cost_timer(None), cache=LatencyCache(None),
                       context=True)
    # predictions come from the layers timed alone (whole-model timings of many groups add up their noise)
    assert lm3.predict_speedup({x.id: 16 for x in groups})[1] == pytest.approx(12032 / 3712)


def test_small_models_are_timed_whole_and_big_ones_layer_by_layer():
    from onnxprune.speed import _small

    assert _small(load(ROOT / "models" / "digits_cnn.onnx"), PruneConfig())
    from tools.resnet50 import resnet50

    assert not _small(resnet50(seed=0), PruneConfig())


def load(path):
    from onnxprune.core.io import load_model

    return load_model(path)


@pytest.mark.parametrize(("context", "whole_ms", "chosen"),
                         [(True, 0.98, 11), (True, 0.95, 16), (False, 0.95, 11), (False, 0.8, 16)])
def test_keeping_a_group_whole_must_clearly_pay(context, whole_ms, chosen):
    """Timed in the whole model, a cut that makes the model slower than the verdict's 3% margin is dropped (the
    model would be slower); timed alone, a layer's gain must be 10%, as a layer's noise is larger."""
    model, dg, g = _model_and_group(c_mid=16)

    def timer(models):  # the cut (11 wide) costs 1.0; the group whole whole_ms
        return [whole_ms if next(t for t in m.graph.initializer if len(t.dims) == 4).dims[0] == 16 else 1.0
                for m in map(model_of, models)]

    lm = LatencyModel(model, dg, batches=(1,), dims={}, timer=timer, cache=LatencyCache(None), context=context)
    assert lm.choose(g, 11) == chosen


@pytest.mark.parametrize(("cut_ms", "chosen"), [(4.4, 8), (1.05, 8), (1.02, 6)])
def test_a_lone_unaligned_cut_is_timed_against_the_full_width(cut_ms, chosen):
    """MobileNetV2's 8-channel groups at ratio 0.3: 6 is the only candidate, and it ran up to 4.4x slower than 8."""
    model, dg, g = _model_and_group(c_mid=8)

    def timer(models):  # the whole model costs 1.0 with the group whole, cut_ms with it cut to 6
        return [1.0 if next(t for t in m.graph.initializer if len(t.dims) == 4).dims[0] == 8 else cut_ms
                for m in map(model_of, models)]

    cache = LatencyCache(None)
    first = LatencyModel(model, dg, batches=(1,), dims={}, timer=timer, cache=cache, context=True)
    assert first.choose(g, 6) == chosen
    assert first.report()["choices"][str(g.id)]["timed"] is True
    assert first.timed == 2  # the cut and the full width, whatever they measured
    again = LatencyModel(model, dg, batches=(1,), dims={}, timer=timer, cache=cache, context=True)
    assert again.choose(g, 6) == chosen
    assert (again.timed, again.cached) == (0, 2)  # the same widths, read from the cache


def test_tiny_models_never_time_a_lone_cut_against_the_full_width():
    """Below 1M MACs a run takes microseconds: a loaded machine's noise kept such groups whole (full suite)."""
    from builders import residual_add

    from onnxprune.speed import latency_model

    tiny = residual_add()
    assert not latency_model(tiny, analyze(tiny), PruneConfig()).time_whole
    cnn = load(ROOT / "models" / "digits_cnn.onnx")
    assert latency_model(cnn, analyze(cnn), PruneConfig()).time_whole
    mobilenet = load(ROOT / "models" / "tv_mobilenet_v2.onnx")  # 0.75M MACs at batch 1, 6M at batch 8
    assert latency_model(mobilenet, analyze(mobilenet), PruneConfig(bench_batches=(1, 8))).time_whole
    assert not latency_model(mobilenet, analyze(mobilenet), PruneConfig(bench_batches=(1,))).time_whole
    model, dg, g = _model_and_group(c_mid=8)
    lm = LatencyModel(model, dg, batches=(1,), dims={}, timer=lambda ms: [1.0 if i else 9.0 for i in range(len(ms))],
                      cache=LatencyCache(None), context=True, time_whole=False)
    assert lm.choose(g, 6) == 6 and lm.timed == 0


def test_whole_models_are_timed_as_served_with_their_dynamic_batch():
    """The calibration and a context-mode group time the model the benchmark runs: dynamic axes kept, fed at the
    batch (onnxruntime plans fixed-input copies otherwise: the digits CNN's 0.3 plan ran 1.02x with its batch
    fixed at 1 and 1.16x as served)."""
    from onnxprune.runtime.latency import AsServed

    model = conv_relu_conv(c_in=8, c_mid=64, c_out=16, hw=8, batch="N")
    dg = analyze(model)
    g = next(g for g in dg.groups if g.prunable)
    seen = []

    def whole(models):
        for item in models:
            assert isinstance(item, AsServed)
            seen.append((item.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param, item.batch))
        return [1.0 + 0.001 * i for i in range(len(models))]

    lm = LatencyModel(model, dg, batches=(1, 8), dims={}, timer=_macs_timer(None), cache=LatencyCache(None),
                      model_timer=whole, calibrate=True)
    assert lm.predict_speedup({g.id: 32})
    context = LatencyModel(model, dg, batches=(1, 8), dims={}, timer=whole, cache=LatencyCache(None), context=True)
    context.choose(g, 40)
    assert {batch for _, batch in seen} == {1, 8} and {name for name, _ in seen} == {"N"}
