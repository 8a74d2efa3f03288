"""Next-token perplexity of a causal language model on an ``.npz`` of token ids, measured in onnxruntime.

Why this module exists: a pruned language model is judged by how well it still predicts text, and cosine of
logits says little about that. Perplexity is ``exp`` of the mean negative log-likelihood of each token given
the ones before it: the logits at position ``t`` score the token at ``t + 1`` (the shift by one), so a
sequence of ``T`` tokens predicts ``T - 1`` of them.

The data file holds the token ids (int ``[N, T]``, keyed by the model's token input, ``input_ids`` by
default) and optionally ``attention_mask`` (``[N, T]``, 1 for a real token, 0 for padding). A target token
counts when it and the token before it are both real, so padding on either side is never scored and never
used as the only context. When the model takes an ``attention_mask`` input it is fed the mask (all ones
when the file has none); any other model input must be in the file, as for ``--data``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, TensorProto

from onnxprune.core.errors import CalibrationError, ConfigError
from onnxprune.core.io import load_model
from onnxprune.runtime.feeds import (
    InputSpec,
    check_batch_size,
    check_feeds,
    fixed_batch_size,
    index_bounds,
    input_specs,
    iter_batches,
    read_npz,
)

log = logging.getLogger(__name__)

#: The input name that carries the padding mask, as Hugging Face exports write it.
MASK_NAME = "attention_mask"
#: The usual name of the token ids input.
IDS_NAME = "input_ids"
#: Past this mean NLL, ``exp`` overflows a float: the perplexity is reported as infinite.
_MAX_LOG = 700.0
_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of one model on one set of token sequences.

    Attributes:
        perplexity: ``exp(nll)``; ``nan`` when the model gave NaN or infinite logits.
        nll: mean negative log-likelihood per scored token, in nats.
        tokens: number of scored (predicted, unpadded) tokens.
        sequences: number of sequences.
        output: the logits output that was read.
        ids_input: the model input that took the token ids.
    """

    perplexity: float
    nll: float
    tokens: int
    sequences: int
    output: str
    ids_input: str

    def as_dict(self) -> dict[str, object]:
        """Plain dictionary for JSON reports."""
        return {"perplexity": self.perplexity, "nll": self.nll, "tokens": self.tokens,
                "sequences": self.sequences, "output": self.output, "ids_input": self.ids_input}


def _pick_ids_input(specs: list[InputSpec], ids_input: str | None) -> str:
    """The model input holding token ids: the named one, else ``input_ids``, else the only integer input."""
    names = [s.name for s in specs]
    if ids_input is not None:
        if ids_input not in names:
            raise ConfigError(f"'{ids_input}' is not an input of the model; choose one of {names} (--ids-input)")
        return ids_input
    if IDS_NAME in names:
        return IDS_NAME
    ints = [s.name for s in specs if s.dtype.kind in "iu" and s.name != MASK_NAME]
    if len(ints) == 1:
        return ints[0]
    raise ConfigError(f"cannot tell which model input takes the token ids among {names}; name it with "
                      f"--ids-input")


def _pick_logits(model: ModelProto, output: str | None) -> str:
    """The logits output: the named one, else ``logits``, else the first float output of rank 3 (or unknown)."""
    names = [o.name for o in model.graph.output]
    if output is not None:
        if output not in names:
            raise ConfigError(f"output '{output}' is not an output of the model; choose one of {names} "
                              f"(--output-name)")
        return output
    candidates = []
    for vi in model.graph.output:
        tt = vi.type.tensor_type
        if tt.elem_type in _FLOATS and (not tt.HasField("shape") or len(tt.shape.dim) == 3):
            candidates.append(vi.name)
    if not candidates:
        raise ConfigError(f"no output of the model looks like next-token logits (a float [batch, sequence, "
                          f"vocab] tensor) among {names}; perplexity needs a causal language model's logits "
                          f"(name the output with --output-name)")
    return "logits" if "logits" in candidates else candidates[0]


def _check_mask(mask: np.ndarray, ids: np.ndarray, where: str) -> np.ndarray:
    """The mask as bool, checked to be [N, T] like the ids and to hold only 0 and 1."""
    if mask.shape != ids.shape:
        raise CalibrationError(f"{where}: '{MASK_NAME}' has shape {mask.shape}, the token ids {ids.shape}; "
                               f"the mask needs one 0/1 entry per token")
    if mask.dtype.kind not in "biuf" or not np.isin(mask, (0, 1)).all():
        raise CalibrationError(f"{where}: '{MASK_NAME}' must hold only 0 (padding) and 1 (token)")
    return mask.astype(bool)


def _refuse_out_of_vocab(ids: np.ndarray, size: int, why: str) -> None:
    """Raise for the first token id at or past ``size``, naming where it is."""
    bad = np.argwhere(ids >= size)[0]
    raise CalibrationError(f"token id {int(ids[tuple(bad)])} at sequence {bad[0]}, position {bad[1]} is outside "
                           f"the model's vocabulary ({why}); ids must be 0..{size - 1}")


def check_perplexity_data(
    model: ModelProto,
    data: str | os.PathLike[str] | Mapping[str, np.ndarray],
    *,
    output: str | None = None,
    ids_input: str | None = None,
) -> tuple[str, str, dict[str, np.ndarray], np.ndarray]:
    """Everything :func:`evaluate_perplexity` checks before running the model, without running it.

    Returns:
        The logits output's name, the ids input's name, the feeds (mask added when the model takes one and
        the data has none) and the bool mask of real tokens ``[N, T]``.

    Raises:
        CalibrationError / ConfigError: as :func:`evaluate_perplexity`.
    """
    where = "data" if isinstance(data, Mapping) else f"perplexity data {data}"
    arrays = (dict(data) if isinstance(data, Mapping)
              else read_npz(data, what="perplexity data", example=f"{IDS_NAME}=ids, {MASK_NAME}=mask"))
    specs = input_specs(model)
    out_name = _pick_logits(model, output)
    ids_name = _pick_ids_input(specs, ids_input)
    if ids_name not in arrays:
        raise CalibrationError(f"{where} has no token ids '{ids_name}' (it has {sorted(arrays)}); save them "
                               f"with numpy.savez(path, {ids_name}=ids) as an int [sequences, tokens] array")
    ids = np.asarray(arrays[ids_name])
    if ids.ndim != 2 or ids.shape[1] < 2 or ids.dtype.kind not in "iu":
        raise CalibrationError(f"{where}: token ids '{ids_name}' must be an integer [sequences, tokens] array "
                               f"with at least 2 tokens per sequence, got {ids.dtype}{list(ids.shape)}")
    if ids.size and int(ids.min()) < 0:
        raise CalibrationError(f"{where}: token ids '{ids_name}' hold a negative id {int(ids.min())}")
    table = index_bounds(model).get(ids_name)
    if table is not None and int(ids.max()) >= table:
        _refuse_out_of_vocab(ids, table, f"the embedding table of input '{ids_name}' has {table} rows")
    mask = (_check_mask(np.asarray(arrays[MASK_NAME]), ids, where) if MASK_NAME in arrays
            else np.ones(ids.shape, dtype=bool))
    mask_spec = next((s for s in specs if s.name == MASK_NAME), None)
    if mask_spec is not None and MASK_NAME not in arrays:
        arrays[MASK_NAME] = np.ones(ids.shape, dtype=mask_spec.dtype)
    feeds = check_feeds(arrays, specs, where=where)
    if not np.count_nonzero(mask[:, 1:] & mask[:, :-1]):
        raise CalibrationError(f"{where}: no token to score (every sequence has fewer than 2 unpadded tokens)")
    fixed = fixed_batch_size(specs)
    if fixed and len(ids) % fixed:
        raise CalibrationError(f"model inputs have fixed batch size {fixed}, which does not divide the "
                               f"{len(ids)} sequences; export the model with a dynamic batch axis")
    return out_name, ids_name, feeds, mask


def _sequence_nll(logits: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """Summed NLL (nats) and count of the scored targets of one sequence; logits ``[T, V]``, ids/mask ``[T]``.

    Position ``t``'s logits score token ``t + 1``; a target counts when it and its predecessor are real.
    """
    scored = mask[1:] & mask[:-1]
    if not scored.any():
        return 0.0, 0
    z = logits[:-1][scored].astype(np.float64)
    targets = ids[1:][scored]
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.sum(log_norm - z[np.arange(len(targets)), targets])), int(len(targets))


def evaluate_perplexity(
    model: str | os.PathLike[str] | ModelProto,
    data: str | os.PathLike[str] | Mapping[str, np.ndarray],
    *,
    output: str | None = None,
    ids_input: str | None = None,
    batch_size: int = 16,
) -> PerplexityResult:
    """Token-level next-token perplexity of a causal language model, run in onnxruntime on the CPU.

    Args:
        model: path to an ``.onnx`` file or a ``ModelProto`` (not modified).
        data: ``.npz`` path or mapping with the token ids (int ``[N, T]``), optionally ``attention_mask``
            (``[N, T]``, 0 = padding) and any other model input.
        output: the logits output (``[batch, sequence, vocab]``); default ``logits``, else the first float
            output of rank 3.
        ids_input: the model input taking token ids; default ``input_ids``, else the only integer input.
        batch_size: sequences per onnxruntime call; a model with a fixed batch dimension uses that instead.

    Returns:
        A :class:`PerplexityResult`.

    Raises:
        CalibrationError: the data lacks the token ids, has the wrong shape or dtype, a bad mask, an id out of
            the vocabulary, or nothing to score.
        ConfigError: ``batch_size`` below 1, a named input/output the model lacks, or no logits-shaped output.
        ModelLoadError: the model cannot be read.
        UnsupportedModelError: onnxruntime cannot load or run the model.

    Example:
        >>> r = evaluate_perplexity("models/tiny_gpt.onnx", "models/tiny_gpt_heldout.npz")  # doctest: +SKIP
        >>> print(f"{r.perplexity:.3f}")  # doctest: +SKIP
    """
    from onnxprune.runtime.session import create_session, run_session

    check_batch_size(batch_size)
    proto = load_model(model)
    out_name, ids_name, feeds, mask = check_perplexity_data(proto, data, output=output, ids_input=ids_input)
    ids = feeds[ids_name]
    step = fixed_batch_size(input_specs(proto)) or batch_size
    session = create_session(model if not isinstance(model, ModelProto) else proto, provider="cpu")
    total, count, start = 0.0, 0, 0
    for batch in iter_batches(feeds, step):
        rows, length = batch[ids_name].shape
        logits = run_session(session, batch, outputs=[out_name], label="the model")[out_name]
        if logits.ndim != 3 or logits.shape[:2] != (rows, length):
            raise ConfigError(f"output '{out_name}' has shape {list(logits.shape)} for token ids of shape "
                              f"{[rows, length]}; perplexity needs [batch, sequence, vocab] logits (choose the "
                              f"logits output with --output-name)")
        vocab = int(logits.shape[2])
        if int(ids.max()) >= vocab:
            _refuse_out_of_vocab(ids, vocab, f"output '{out_name}' scores {vocab} tokens")
        for i in range(rows):
            nll, n = _sequence_nll(logits[i], batch[ids_name][i], mask[start + i])
            total += nll
            count += n
        start += rows
    mean = total / count
    if math.isfinite(mean):
        ppl = math.exp(mean) if mean < _MAX_LOG else math.inf
    else:
        log.warning("the model gave NaN or infinite logits on output '%s'; perplexity is not finite", out_name)
        ppl = math.nan
    result = PerplexityResult(perplexity=ppl, nll=mean,
                              tokens=count, sequences=len(ids), output=out_name, ids_input=ids_name)
    log.debug("perplexity on %d tokens: %s", count, result)
    return result
