"""Options say what they do and do what they say (issue 12, items 4, 5 and 9).

An option the chosen mode would ignore is refused, naming the option and the mode; the one safe inference
(``--sparsity`` alone means unstructured) is applied and said. Criteria are checked against the mode. The API
checks a config when it is made, names parameters (``ratio``) where the CLI names flags (``--ratio``), and every
failure is an ``OnnxPruneError``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import conv_bn_relu, mlp
from test_bad_input import assert_cli_fails

import onnxprune as op
from onnxprune.cli.main import main
from onnxprune.config import PruneConfig
from onnxprune.core.errors import ConfigError, OnnxPruneError


@pytest.fixture
def mlp_file(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "mlp.onnx"
    path.parent.mkdir()
    onnx.save(mlp(), str(path))
    return path


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _zero_share(path: Path) -> float:
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.dims and
               len(t.dims) == 2]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)


# -- item 4: options silently ignored ---------------------------------------------------------------------
def test_sparsity_alone_selects_unstructured_and_says_so(mlp_file: Path, out_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out, report = out_dir / "p.onnx", out_dir / "r.json"
    assert main(["prune", str(mlp_file), "-o", str(out), "--sparsity", "0.9", "--report", str(report)]) == 0
    err = capsys.readouterr().err
    assert "--sparsity given without --mode: pruning with --mode unstructured" in err
    assert json.loads(report.read_text())["mode"] == "unstructured"
    assert _zero_share(out) == pytest.approx(0.9, abs=0.01)  # not structured at ratio 0.3


def test_api_sparsity_alone_selects_unstructured(mlp_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = PruneConfig(sparsity=0.9)
    assert config.mode == "unstructured" and config.given == {"sparsity"}
    with caplog.at_level(logging.WARNING):
        result = op.prune(mlp_file, config)
    assert result.report["mode"] == "unstructured"
    assert result.report["sparsity"]["overall"] == pytest.approx(0.9, abs=0.01)
    assert any("sparsity given without mode" in w for w in result.warnings)


@pytest.mark.parametrize(("args", "match"), [
    (["--mode", "unstructured", "--ratio", "0.9"],
     r"--ratio does not apply to --mode unstructured .*use --sparsity"),
    (["--mode", "structured", "--sparsity", "0.9"], r"--sparsity does not apply to --mode structured"),
    (["--sparsity", "0.9", "--ratio", "0.5"], r"--sparsity .* and --ratio .* cannot be used together"),
    (["--mode", "structured", "--layer-sparsity", "fc*=0.3"], r"--layer-sparsity does not apply to --mode structured"),
    (["--ratio", "0.5", "--layer-sparsity", "fc*=0.3"], r"cannot be used together"),
    (["--mode", "nm", "--scope", "global"], r"--scope does not apply to --mode nm"),
    (["--mode", "structured", "--sparse-storage"], r"--sparse-storage does not apply to --mode structured"),
    (["--sparse-storage"], r"--sparse-storage applies to --mode unstructured or --mode nm; set --mode"),
    (["--max-error", "0.1"], r"--max-error applies only with --target-macs or --target-params"),
    (["--max-error", "0.1", "--target-macs", "0.5"], r"--max-error is measured on calibration data; pass --calib"),
    (["--labels", "y"], r"--labels applies only with --eval-data"),
    (["--mode", "unstructured", "--runs", "3"], r"--runs applies only with --bench"),
])
def test_option_of_another_mode_is_refused(args: list[str], match: str, mlp_file: Path, out_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert_cli_fails(["prune", str(mlp_file), "-o", str(out_dir / "p.onnx"), *args], capsys, inputs=[mlp_file],
                     out_dir=out_dir, match=match)


@pytest.mark.parametrize(("args", "match"), [
    (["--ratio", "0.5"], r"--ratio does not apply with --plan-in"),
    (["--scope", "global"], r"--scope does not apply with --plan-in"),
    (["--importance", "l1"], r"--importance does not apply with --plan-in"),
    (["--mode", "unstructured"], r"--plan-in does not apply to --mode unstructured"),
])
def test_plan_in_refuses_what_the_plan_decides(args: list[str], match: str, tmp_path: Path, out_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "cnn.onnx"
    onnx.save(conv_bn_relu(), str(source))
    plan = tmp_path / "plan.json"
    assert main(["prune", str(source), "-o", str(tmp_path / "first.onnx"), "--plan-out", str(plan), "-q"]) == 0
    assert_cli_fails(["prune", str(source), "-o", str(out_dir / "p.onnx"), "--plan-in", str(plan), *args], capsys,
                     inputs=[source, plan], out_dir=out_dir, match=match)


def test_plan_in_alone_still_works(tmp_path: Path) -> None:
    source = tmp_path / "cnn.onnx"
    onnx.save(conv_bn_relu(), str(source))
    plan = tmp_path / "plan.json"
    assert main(["prune", str(source), "-o", str(tmp_path / "a.onnx"), "--ratio", "0.5", "--plan-out", str(plan),
                 "-q"]) == 0
    assert main(["prune", str(source), "-o", str(tmp_path / "b.onnx"), "--plan-in", str(plan), "-q"]) == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


@pytest.mark.parametrize(("changes", "match"), [
    ({"mode": "unstructured", "ratio": 0.9}, r"^ratio does not apply to mode='unstructured'.*use sparsity"),
    ({"plan_in": "p.json", "ratio": 0.5}, r"^ratio does not apply with plan_in"),
    ({"mode": "structured", "layer_sparsity": {"fc": 0.3}}, r"^layer_sparsity does not apply to mode='structured'"),
    ({"max_error": 0.1}, r"^max_error applies only with target_macs or target_params"),
    ({"mode": "unstructured", "global_rank": True}, r"^global_rank does not apply.*use scope"),
    ({"global_rank": True, "scope": "layer"}, r"contradict"),
])
def test_api_refuses_options_the_mode_ignores(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PruneConfig(**changes)


def test_scope_global_is_global_rank_in_structured_mode() -> None:
    assert PruneConfig(scope="global").global_rank
    assert PruneConfig(global_rank=True).scope == "global"
    assert PruneConfig(mode="unstructured", scope="global").scope == "global"


# -- item 5: criteria -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "match"), [
    (["--importance", "bogus"], r"unknown --importance criterion 'bogus'; .*choose .*l1, l2.*activation, apoz, wanda"),
    (["--importance", "L2"], r"unknown --importance criterion 'L2' \(names are lower-case: did you mean 'l2'\?\)"),
    (["--mode", "unstructured", "--importance", "fpgm"],
     r"--importance fpgm does not apply to --mode unstructured; choose magnitude, l1, l2"),
    (["--mode", "nm", "--importance", "bn_scale"], r"--importance bn_scale does not apply to --mode nm"),
    (["--importance", "wanda"], r"--importance wanda .*needs calibration data; pass --calib"),
])
def test_importance_unknown_or_not_for_the_mode(args: list[str], match: str, mlp_file: Path, out_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    failure = assert_cli_fails(["prune", str(mlp_file), "-o", str(out_dir / "p.onnx"), *args], capsys,
                               inputs=[mlp_file], out_dir=out_dir, match=match)
    if "wanda" not in args:
        assert "calibration" not in failure.line.split(";")[0]


def test_registered_criterion_is_valid_in_structured_mode() -> None:
    assert PruneConfig(importance="random").importance == "random"
    with pytest.raises(ConfigError, match=r"unknown importance criterion 'my_crit'"):
        PruneConfig(importance="my_crit")


# -- item 9: the API ----------------------------------------------------------------------------------------
def test_prune_takes_a_dict_of_options(mlp_file: Path) -> None:
    a = op.prune(mlp_file, {"ratio": 0.5})
    b = op.prune(mlp_file, PruneConfig(ratio=0.5))
    assert a.report["params_after"] == b.report["params_after"] < a.report["params_before"]
    with pytest.raises(ConfigError, match=r"no option 'ratoi'; did you mean 'ratio'\?"):
        op.prune(mlp_file, {"ratoi": 0.5})
    with pytest.raises(ConfigError, match=r"config must be a PruneConfig or a dict"):
        op.prune(mlp_file, "ratio=0.5")  # type: ignore[arg-type]


@pytest.mark.parametrize(("make", "match"), [
    (lambda: PruneConfig(ratio="0.3"), r"^ratio must be a number, got str '0.3'"),  # type: ignore[arg-type]
    (lambda: PruneConfig(ratio=True), r"^ratio must be a number"),
    (lambda: PruneConfig(round_to=2.5), r"^round_to must be auto or an integer"),
    (lambda: PruneConfig(0.3), r"keyword arguments only"),  # type: ignore[misc]
    (lambda: PruneConfig(ratio=1.0), r"^ratio must be in \[0, 1\), got 1.0$"),
    (lambda: PruneConfig(mode="sparse"),
     r"^mode must be one of structured, unstructured, nm, width, depth, got 'sparse'$"),
    (lambda: PruneConfig(exclude=["a", 3]), r"^exclude must be a string"),  # type: ignore[list-item]
    (lambda: PruneConfig(validate="no"), r"^validate must be True or False"),  # type: ignore[arg-type]
])
def test_config_is_checked_when_made_naming_the_parameter(make, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        make()
    assert isinstance(info.value, OnnxPruneError) and isinstance(info.value, ValueError)
    assert "--" not in str(info.value)  # API messages name parameters, not flags


def test_cli_names_the_flag_for_the_same_mistake(mlp_file: Path, out_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert_cli_fails(["prune", str(mlp_file), "-o", str(out_dir / "p.onnx"), "--ratio", "1.0"], capsys,
                     inputs=[mlp_file], out_dir=out_dir, match=r"error: --ratio must be in \[0, 1\), got 1.0$")


def test_single_exclude_string_is_one_pattern(mlp_file: Path) -> None:
    config = PruneConfig(exclude="no_such_layer*")
    assert config.exclude == ("no_such_layer*",)
    result = op.prune(mlp_file, config)
    assert [w for w in result.warnings if "matched no layer" in w] == [
        "--exclude 'no_such_layer*' matched no layer; check the name (onnxprune analyze lists them)"]
    assert PruneConfig(providers="cpu,cuda").providers == ("cpu", "cuda")
    assert PruneConfig(calib=Path("c.npz"), recover="bias").calib == "c.npz"


def test_make_plan_takes_a_path_as_apply_plan_does(mlp_file: Path) -> None:
    dg = op.analyze(mlp_file)
    from_path = op.make_plan(str(mlp_file), dg, ratio=0.5)
    from_model = op.make_plan(op.load_model(mlp_file), dg, ratio=0.5)
    assert {g: k.tolist() for g, k in from_path.keep.items()} == {g: k.tolist() for g, k in from_model.keep.items()}
    pruned = op.apply_plan(str(mlp_file), from_path)
    assert sum(int(np.prod(t.dims)) for t in pruned.graph.initializer) < sum(
        int(np.prod(t.dims)) for t in mlp().graph.initializer)
    with pytest.raises(ConfigError, match=r"needs the model's DependencyGraph"):
        op.make_plan(mlp_file, "not a graph", ratio=0.5)  # type: ignore[arg-type]
    with pytest.raises(op.PlanError, match=r"plan must be a PrunePlan .*got str"):
        op.apply_plan(mlp_file, "plan.json")  # type: ignore[arg-type]


def test_with_keeps_what_was_set() -> None:
    config = PruneConfig(sparsity=0.8).with_(scope="global")
    assert config.mode == "unstructured" and config.sparsity == 0.8 and config.scope == "global"
    assert config.given == {"sparsity", "scope"}


def test_nm_alone_selects_nm_and_checks_the_pattern() -> None:
    assert PruneConfig(nm="2:4").mode == "nm"
    assert PruneConfig(nm="1:4").notes == ("nm given without mode: pruning with mode='nm'",)
    with pytest.raises(ConfigError, match=r"N:M pattern needs 0 < n < m"):
        PruneConfig(nm="4:2")
    with pytest.raises(ConfigError, match=r"^recover='bias' needs calibration data"):
        PruneConfig(sparsity=0.5, recover="bias")  # data-free bias exists for structured mode only


def test_config_survives_pickle_with_what_was_set() -> None:
    import pickle

    config = PruneConfig(sparsity=0.9, exclude="a*")
    again = pickle.loads(pickle.dumps(config))
    assert again == config and again.given == {"sparsity", "exclude"} and again.notes == config.notes
