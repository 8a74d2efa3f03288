"""Check every file, key, shape and provider a prune run will use, before its first heavy step.

Why: calibration, sensitivity and recovery take seconds to hours, and validation, accuracy and the
benchmark come after them. A wrong ``--data`` shape, a missing ``--labels`` key or ``--providers cuda``
on a machine without CUDA used to fail only then. :func:`check_run_inputs` reads each data file once
(arrays, keys, dtypes, shapes, finiteness, sample counts against a fixed batch) and asks onnxruntime
for each provider, in well under a second on small models, so a run fails before any work or not for
these reasons at all.
"""

from __future__ import annotations

import logging

from onnx import ModelProto

from onnxprune.config import PruneConfig
from onnxprune.core.errors import CalibrationError

log = logging.getLogger(__name__)


def check_run_inputs(model: ModelProto, config: PruneConfig) -> None:
    """Refuse, with one line, any data file or provider of ``config`` that a later step would refuse.

    Args:
        model: the loaded input model (its declared inputs and outputs are what the data must fit).
        config: the validated options.

    Raises:
        CalibrationError: a data file is missing, not an ``.npz``, lacks a key, has a wrong dtype, shape,
            sample count or non-finite values.
        ConfigError: a provider is unknown or not available here, or evaluation data has no usable output.
    """
    from onnxprune.runtime.feeds import fixed_batch_size, input_specs, load_npz_feeds, num_samples
    from onnxprune.runtime.session import check_provider_available, is_gpu_provider, parse_providers, warm_up_provider

    for provider in parse_providers(config.providers) if config.validate or config.bench else ():
        check_provider_available(provider)
        if is_gpu_provider(provider):
            warm_up_provider(provider)  # built in is not enough: only a session proves a GPU and driver
    fixed = fixed_batch_size(input_specs(model))
    for option, path in (("--calib", config.calib), ("--data", config.validation_data)):
        if path:
            feeds = load_npz_feeds(path, model, what=f"{_what(option)} ({option})")
            _check_fixed_batch(option, path, num_samples(feeds), fixed)
    if config.eval_data:
        from onnxprune.runtime.evaluate import check_eval_data

        check_eval_data(model, config.eval_data, labels=config.labels)
    log.debug("preflight: data files and providers checked")


def _what(option: str) -> str:
    return {"--calib": "calibration data", "--data": "validation data"}[option]


def _check_fixed_batch(option: str, path: str, n: int, fixed: int | None) -> None:
    """A model exported for batch ``fixed`` can only be run on whole batches of it."""
    if fixed and n % fixed:
        raise CalibrationError(
            f"{_what(option)} ({option}) {path} has {n} samples, not a multiple of the model's fixed batch "
            f"{fixed}; keep the first {n - n % fixed or fixed} samples (or export the model with a dynamic "
            f"batch axis)"
        )
