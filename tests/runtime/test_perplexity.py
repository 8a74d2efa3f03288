"""Perplexity: equal to a hand computation on a bigram model, shifted by one, padding excluded, mask fed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli.main import main
from onnxprune.core.errors import CalibrationError, ConfigError
from onnxprune.runtime.perplexity import evaluate_perplexity

VOCAB = 7
MODELS = Path(__file__).resolve().parents[2] / "models"


def _table(seed: int = 0) -> np.ndarray:
    """Bigram logits: row ``a`` scores the token after ``a``; not symmetric, so a missing shift shows."""
    return np.random.default_rng(seed).normal(0.0, 2.0, (VOCAB, VOCAB)).astype(np.float32)


def bigram_lm(*, with_mask: bool = False, rank2: bool = False) -> onnx.ModelProto:
    """``logits[b, t] = table[ids[b, t]]`` (+ ``c · sum(mask[b])`` when the model takes a mask).

    The mask term makes every scored logit depend on what the model was fed as the mask, so a test can tell
    whether the data's mask (or all ones) reached the model. ``rank2`` gives a classifier-like [N, V] output.
    """
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    inits = [numpy_helper.from_array(_table(), "table")]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["g"], axis=0)]
    inputs = [ids]
    last = "g"
    if with_mask:
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]))
        inits += [numpy_helper.from_array(np.linspace(-1, 1, VOCAB).astype(np.float32), "c"),
                  numpy_helper.from_array(np.array([1], np.int64), "ax1"),
                  numpy_helper.from_array(np.array([2], np.int64), "ax2")]
        nodes += [helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
                  helper.make_node("ReduceSum", ["mf", "ax1"], ["ms"], keepdims=1),  # [B, 1]
                  helper.make_node("Unsqueeze", ["ms", "ax2"], ["ms3"]),  # [B, 1, 1]
                  helper.make_node("Mul", ["ms3", "c"], ["shift"]),
                  helper.make_node("Add", ["g", "shift"], ["ga"])]
        last = "ga"
    if rank2:
        nodes.append(helper.make_node("ReduceMean", [last], ["logits"], axes=[1], keepdims=0))
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", VOCAB])
    else:
        nodes.append(helper.make_node("Identity", [last], ["logits"]))
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", VOCAB])
    graph = helper.make_graph(nodes, "bigram", inputs, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _log_softmax_at(row: np.ndarray, k: int) -> float:
    """log p(k) of one logits row, with plain Python floats (an independent computation)."""
    values = [float(v) for v in row]
    top = max(values)
    return values[k] - top - math.log(sum(math.exp(v - top) for v in values))


def hand_perplexity(ids: np.ndarray, mask: np.ndarray | None = None, *, shift: int = 1,
                    mask_term: bool = False) -> float:
    """The definition, loop by loop: logits at t score the token at t + shift; both tokens must be real."""
    table = _table()
    c = np.linspace(-1, 1, VOCAB).astype(np.float32)
    mask = np.ones_like(ids) if mask is None else mask
    nll, n = 0.0, 0
    for b in range(ids.shape[0]):
        fed = mask[b].sum() if mask_term else 0
        for t in range(ids.shape[1] - shift):
            if mask[b, t] and mask[b, t + shift]:
                row = table[ids[b, t]] + (np.float32(fed) * c if mask_term else 0)
                nll -= _log_softmax_at(row, int(ids[b, t + shift]))
                n += 1
    return math.exp(nll / n)


IDS = np.random.default_rng(1).integers(0, VOCAB, (5, 9)).astype(np.int64)


def test_equals_the_hand_computed_shifted_perplexity() -> None:
    result = evaluate_perplexity(bigram_lm(), {"input_ids": IDS})
    assert result.perplexity == pytest.approx(hand_perplexity(IDS), rel=1e-9)
    assert (result.tokens, result.sequences, result.output, result.ids_input) == (5 * 8, 5, "logits", "input_ids")
    # the test can tell an off-by-one: scoring t from t's own logits, or t + 2, gives other numbers
    assert abs(hand_perplexity(IDS, shift=2) - result.perplexity) > 0.1
    unshifted = math.exp(-np.mean([_log_softmax_at(_table()[a], int(a)) for a in IDS.ravel()]))
    assert abs(unshifted - result.perplexity) > 0.1


@pytest.mark.parametrize("batch", [1, 2, 5, 64])
def test_batch_size_does_not_change_the_result(batch: int) -> None:
    result = evaluate_perplexity(bigram_lm(), {"input_ids": IDS}, batch_size=batch)
    assert result.perplexity == pytest.approx(hand_perplexity(IDS), rel=1e-12)


def test_padding_is_never_scored_nor_used_as_context() -> None:
    mask = np.ones_like(IDS)
    mask[0, 6:] = 0  # right padding
    mask[1, :3] = 0  # left padding
    mask[2, 1:] = 0  # a single real token: nothing to score
    result = evaluate_perplexity(bigram_lm(), {"input_ids": IDS, "attention_mask": mask})
    assert result.tokens == 40 - 3 - 3 - 8
    assert result.perplexity == pytest.approx(hand_perplexity(IDS, mask), rel=1e-9)
    # the same as scoring the real tokens alone, as separate unpadded sequences
    pieces = [IDS[0, :6], IDS[1, 3:], IDS[3], IDS[4]]
    nll = sum(-_log_softmax_at(_table()[p[t]], int(p[t + 1])) for p in pieces for t in range(len(p) - 1))
    assert result.perplexity == pytest.approx(math.exp(nll / result.tokens), rel=1e-9)
    # whatever id a pad holds, the result does not move
    other = IDS.copy()
    other[mask == 0] = (other[mask == 0] + 3) % VOCAB
    assert evaluate_perplexity(bigram_lm(), {"input_ids": other, "attention_mask": mask}).perplexity == \
        pytest.approx(result.perplexity, rel=1e-12)


def test_the_data_mask_is_fed_to_a_model_that_takes_one(tmp_path: Path) -> None:
    mask = np.ones_like(IDS)
    mask[0, 6:] = 0
    mask[3, :2] = 0
    model = bigram_lm(with_mask=True)
    result = evaluate_perplexity(model, {"input_ids": IDS, "attention_mask": mask})
    assert result.perplexity == pytest.approx(hand_perplexity(IDS, mask, mask_term=True), rel=1e-6)
    assert abs(result.perplexity - hand_perplexity(IDS, mask)) > 1e-3  # the mask term matters
    # no mask in the data: the model gets all ones
    plain = evaluate_perplexity(model, {"input_ids": IDS})
    assert plain.perplexity == pytest.approx(hand_perplexity(IDS, mask_term=True), rel=1e-6)


def test_model_without_logits_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"no output of the model looks like next-token logits .*--output-name"):
        evaluate_perplexity(bigram_lm(rank2=True), {"input_ids": IDS})
    with pytest.raises(ConfigError, match=r"output 'nope' is not an output of the model"):
        evaluate_perplexity(bigram_lm(), {"input_ids": IDS}, output="nope")


@pytest.mark.parametrize(("data", "match"), [
    ({"tokens": IDS}, r"has no token ids 'input_ids' \(it has \['tokens'\]\)"),
    ({"input_ids": IDS[:, :1]}, r"at least 2 tokens per sequence"),
    ({"input_ids": IDS.astype(np.float32)}, r"must be an integer \[sequences, tokens\] array"),
    ({"input_ids": IDS + VOCAB}, r"token id \d+ at sequence 0, position 0 is outside the model's vocabulary "
                             r"\(the embedding table of input 'input_ids' has 7 rows\); ids must be 0..6"),
    ({"input_ids": IDS - VOCAB}, r"negative id"),
    ({"input_ids": IDS, "attention_mask": np.ones((5, 8))}, r"'attention_mask' has shape \(5, 8\)"),
    ({"input_ids": IDS, "attention_mask": np.full(IDS.shape, 2)}, r"only 0 \(padding\) and 1"),
    ({"input_ids": IDS, "attention_mask": np.eye(5, 9, dtype=np.int64)}, r"no token to score"),
])
def test_bad_data_is_refused_with_one_clear_line(data: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(CalibrationError, match=match) as info:
        evaluate_perplexity(bigram_lm(), data)
    assert "\n" not in str(info.value)


def test_cli_prints_perplexity_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data = tmp_path / "lm.onnx", tmp_path / "ids.npz"
    onnx.save(bigram_lm(), str(model))
    np.savez(data, input_ids=IDS)
    assert main(["eval", str(model), "--perplexity", str(data), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["perplexity"] == pytest.approx(hand_perplexity(IDS), rel=1e-9) and got["tokens"] == 40
    assert main(["eval", str(model), "--perplexity", str(data), "--batch-size", "2"]) == 0
    assert f"perplexity {hand_perplexity(IDS):.4f}" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "match"), [
    (["--eval-data", "x.npz"], "--perplexity and --eval-data are two different measures"),
    (["--labels", "y"], "--labels is read only with --eval-data"),
])
def test_cli_refuses_mixed_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                   match: str) -> None:
    model, data = tmp_path / "lm.onnx", tmp_path / "ids.npz"
    onnx.save(bigram_lm(), str(model))
    np.savez(data, input_ids=IDS)
    assert main(["eval", str(model), "--perplexity", str(data), *extra]) == 1
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_cli_missing_ids_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data = tmp_path / "lm.onnx", tmp_path / "ids.npz"
    onnx.save(bigram_lm(), str(model))
    np.savez(data, tokens=IDS)
    assert main(["eval", str(model), "--perplexity", str(data)]) == 1
    err = capsys.readouterr().err
    assert "has no token ids 'input_ids'" in err and err.count("\n") == 1 and "Traceback" not in err


def test_shipped_language_model_matches_the_training_scripts_torch_perplexity() -> None:
    """onnxruntime + this module on the held-out windows equal torch's cross-entropy at training time."""
    info = json.loads((MODELS / "manifest.json").read_text())["models"]["tiny_gpt"]
    result = evaluate_perplexity(MODELS / info["file"], MODELS / info["data"]["heldout"]["file"])
    assert result.perplexity == pytest.approx(info["perplexity"]["heldout"], rel=1e-5)
    assert result.perplexity < info["perplexity"]["unigram"] / 2
    assert (result.sequences, result.tokens) == (256, 256 * 127)
