"""onnxruntime sessions: provider names, CUDA checks, session creation and running.

Why this module exists: every part of onnxprune that runs a model (validation, benchmarks, calibration,
evaluation) must agree on how a provider is named, must never silently fall back from CUDA to the CPU
(a "GPU" benchmark that ran on the CPU is worse than none), and must turn onnxruntime's own exception
classes, which do not derive from anything common, into one typed, one-line :class:`OnnxPruneError`.

onnxruntime is imported here and only here (lazily by the package), so ``import onnxprune`` stays light.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import ModelProto
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from onnxprune.core.errors import ConfigError, ModelLoadError, UnsupportedModelError, first_line
from onnxprune.core.io import load_model, model_nbytes, save_model

log = logging.getLogger(__name__)

#: Short provider names accepted everywhere (CLI ``--providers``, Python ``providers=``); any other name
#: ending in ``ExecutionProvider`` is passed through to onnxruntime unchanged.
PROVIDER_ALIASES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "rocm": "ROCMExecutionProvider",
}

#: The exception classes onnxruntime's bindings raise; they share no base class but ``Exception``.
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(_ort_state, n)
    for n in ("Fail", "InvalidArgument", "InvalidGraph", "NoSuchFile", "NoModel", "EngineError",
              "RuntimeException", "InvalidProtobuf", "ModelLoaded", "NotImplemented", "EPFail")
    if hasattr(_ort_state, n)
) + (RuntimeError,)

_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_dlls_preloaded = False


def resolve_provider(name: str) -> str:
    """Map a short provider name (``cpu``, ``cuda``, ...) to onnxruntime's name.

    Raises:
        ConfigError: an unknown short name.

    Example:
        >>> resolve_provider("cuda")
        'CUDAExecutionProvider'
    """
    key = name.strip()
    if key.lower() in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[key.lower()]
    if key.endswith("ExecutionProvider"):
        return key
    raise ConfigError(
        f"unknown provider '{name}'; use one of {', '.join(sorted(PROVIDER_ALIASES))} "
        f"or a full onnxruntime name such as CPUExecutionProvider"
    )


def parse_providers(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Turn ``"cpu,cuda"`` or ``("cpu", "cuda")`` into short, de-duplicated provider names.

    Known aliases come back lower-case (``cpu``); raw onnxruntime names come back as given.

    Raises:
        ConfigError: an empty list or an unknown name.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        full = resolve_provider(item)
        short = next((k for k, v in PROVIDER_ALIASES.items() if v == full and k != "trt"), full)
        if short not in out:
            out.append(short)
    if not out:
        raise ConfigError("no provider given; pass e.g. --providers cpu or --providers cpu,cuda")
    return tuple(out)


def is_gpu_provider(name: str) -> bool:
    """True for providers whose inputs should live on the GPU (timed with I/O binding)."""
    return resolve_provider(name) in _GPU_PROVIDERS


def _preload_dlls() -> None:
    """Let onnxruntime-gpu find the CUDA/cuDNN libraries shipped as Python packages (ORT ≥ 1.21)."""
    global _dlls_preloaded
    if _dlls_preloaded or not hasattr(ort, "preload_dlls"):
        return
    _dlls_preloaded = True
    try:
        ort.preload_dlls()
    except (OSError, *ORT_ERRORS) as exc:  # type: ignore[misc]  # best effort: the session check tells
        log.debug("onnxruntime.preload_dlls() failed: %s", first_line(exc))


def check_provider_available(name: str) -> str:
    """Return onnxruntime's name for ``name`` after checking the installed build has it.

    Raises:
        ConfigError: the provider is not compiled into the installed onnxruntime.
    """
    full = resolve_provider(name)
    if full in _GPU_PROVIDERS:
        _preload_dlls()
    available = list(ort.get_available_providers())
    if full not in available:
        if full == "CUDAExecutionProvider":
            raise ConfigError(
                f"CUDAExecutionProvider is not available (installed onnxruntime has: {available}); "
                f'install the gpu extra (pip install -e ".[gpu]", onnxruntime-gpu) on a machine with an NVIDIA GPU'
            )
        raise ConfigError(
            f"{full} is not available (installed onnxruntime has: {available}); "
            f"install an onnxruntime build with that provider"
        )
    return full


def cuda_available() -> bool:
    """True when a CUDA session can really be created here (provider built in and a GPU present)."""
    try:
        check_provider_available("cuda")
    except ConfigError:
        return False
    # The provider can be built in with no GPU or driver present; only a real session tells.
    try:
        warm_up_provider("cuda")
    except (ConfigError, UnsupportedModelError):
        return False
    return True


def _probe_model() -> ModelProto:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "onnxprune_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    probe.ir_version = 8
    return probe


def warm_up_provider(provider: str) -> None:
    """Create and run a one-node session, so one-time runtime setup (environment, CUDA context) is paid
    before anything is measured.

    Raises:
        ConfigError / UnsupportedModelError: as :func:`create_session`.
    """
    session = create_session(_probe_model(), provider=provider, threads=1, name="the provider probe")
    run_session(session, {"x": np.zeros(1, dtype=np.float32)}, label="the provider probe")


def session_options(*, threads: int | None = None, alternated: bool = False) -> ort.SessionOptions:
    """Session options used everywhere: full graph optimization, quiet logs, optional thread count.

    ``alternated``: the session is one of several timed in turn in this process (a benchmark, a latency
    table), so its intra-op threads do not spin-wait after a run (see :data:`ALTERNATED_SPINNING`).

    Raises:
        ConfigError: ``threads`` below 1.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}; pass --threads 1 or more")
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if alternated and not ALTERNATED_SPINNING:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


#: Whether sessions timed in turn in one process keep onnxruntime's spin-waiting intra-op threads. They do not:
#: after each run a session's worker threads spin for a while, and the next session's run then shares the
#: cores with them, so alternating two models timed the contention and not the models. Measured on the 2-core
#: development machine, full-size ResNet-50 and its 0.3 prune (round-to 16), 2 threads, batch 1, 40
#: alternating rounds: 92.0 / 57.0 ms (p50, original / pruned) with spinning, 44.5 / 24.9 ms without; each
#: model alone with spinning, 48.3 / 28.7 ms. A model served alone keeps onnxruntime's default.
ALTERNATED_SPINNING = False


#: A ``ModelProto`` at least this large is handed to onnxruntime as a temporary file with external data
#: rather than as serialized bytes. Measured on a 100 MB MLP (1 CPU session, onnxruntime 1.32): from bytes
#: the session grew the process by 2.85x the model (serialized copy + onnxruntime's parse + its weights),
#: from a file by 1.0x (onnxruntime maps the aligned external data). Lowered from 64 MiB: the 50 MB pruned
#: model of ``tools/bench_large.py --size-gb 0.1 --width 1024`` grew the process by 145 MB (peak) from bytes,
#: by 61 MB from a file (session built and run once); writing the file takes a fraction of a second.
SESSION_FILE_BYTES = 16 * 2**20


def create_session(
    model: str | os.PathLike[str] | ModelProto,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    name: str | None = None,
    low_memory: bool = False,
    alternated: bool = False,
    cuda_graph: bool = False,
) -> ort.InferenceSession:
    """Create an onnxruntime session on exactly one provider (CPU may take nodes it cannot run).

    A ``ModelProto`` of ``SESSION_FILE_BYTES`` or more is written to a temporary folder with external data
    first (deleted once the session is built): onnxruntime then maps the weights from the file instead of
    parsing a serialized copy, and it cannot take a model above the protobuf limit as bytes at all.

    Args:
        model: a path or a ``ModelProto`` (not modified).
        provider: a short name (``cpu``, ``cuda``, ...) or an onnxruntime provider name.
        threads: intra-op thread count (``None``: onnxruntime's default, one per core).
        name: how messages name the model (default: the path or graph name).
        low_memory: for one-off runs (validation): also turn off weight pre-packing, so the weights stay
            in the mapped file (paged in while running, returned when the session is deleted) instead of
            being copied into packed buffers that the allocator keeps after the session is gone (measured:
            100 MB still resident after deleting a 100 MB model's session). Do not use it for timing:
            pre-packed kernels can be faster.
        alternated: the session is timed in turn with others in this process (see :func:`session_options`).
        cuda_graph: on CUDA, capture the model's kernels as a CUDA graph and replay it on each run (onnxruntime's
            ``enable_cuda_graph``): one launch per run instead of one per kernel, which is what a small or
            pruned model at batch 1 spends most of its time on. Runs must use I/O binding with fixed
            addresses (:class:`DeviceRunner`), and onnxruntime refuses a model with any node placed off the
            GPU (a shape computation on the CPU): that refusal is raised as ``UnsupportedModelError``.

    Returns:
        The session; ``session.get_providers()[0]`` is the asked provider.

    Raises:
        ConfigError: the provider is unavailable, or the session silently fell back to the CPU.
        ModelLoadError: the path does not exist.
        UnsupportedModelError: onnxruntime refuses the model (an op it lacks, a bad graph).

    Example:
        >>> sess = create_session("model.onnx", provider="cpu", threads=1)  # doctest: +SKIP
    """
    full = check_provider_available(provider)
    if cuda_graph and full != "CUDAExecutionProvider":
        raise ConfigError(f"CUDA graphs need the CUDA provider, not {full}; pass --providers cuda")
    first: object = (full, {"enable_cuda_graph": "1"}) if cuda_graph else full
    providers = [first] if full == "CPUExecutionProvider" else [first, "CPUExecutionProvider"]
    opts = session_options(threads=threads, alternated=alternated)
    if low_memory:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    label = name or (model.graph.name if isinstance(model, ModelProto) else str(model)) or "<model>"
    try:
        if isinstance(model, ModelProto):
            if model_nbytes(model) < SESSION_FILE_BYTES:
                session = ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
            else:
                with tempfile.TemporaryDirectory(prefix="onnxprune-ort-", ignore_cleanup_errors=True) as tmp:
                    path = save_model(model, Path(tmp) / "model.onnx", external_data=True)
                    session = ort.InferenceSession(str(path), opts, providers=providers)
        else:
            path = Path(model)
            if not path.is_file():
                load_model(path)  # raises the usual one-line ModelLoadError
                raise ModelLoadError(f"{path}: not a file; pass an .onnx file")
            session = ort.InferenceSession(str(path), opts, providers=providers)
    except ORT_ERRORS as exc:
        raise UnsupportedModelError(
            f"onnxruntime ({full}) cannot load {label}: {first_line(exc)}; "
            f"check the model with 'onnxprune validate' or upgrade onnxruntime"
        ) from exc
    used = session.get_providers()
    if not used or used[0] != full:
        raise ConfigError(
            f"onnxruntime fell back from {full} to {used} for {label}; check the GPU driver and "
            f'CUDA/cuDNN libraries (the ".[gpu]" extra needs a working NVIDIA setup)'
        )
    return session


def session_provider(session: ort.InferenceSession) -> str:
    """The main provider a session runs on (the first one onnxruntime reports)."""
    return str(session.get_providers()[0])


def run_session(
    session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    label: str = "model",
) -> dict[str, np.ndarray]:
    """Run a session on host arrays; returns ``{output name: array}``.

    Raises:
        UnsupportedModelError: onnxruntime fails at run time (a kernel error, a shape it rejects).
    """
    names = list(outputs) if outputs is not None else [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, dict(feeds))
    except ORT_ERRORS as exc:
        raise UnsupportedModelError(
            f"onnxruntime ({session_provider(session)}) failed to run {label}: {first_line(exc)}; "
            f"check the input shapes (--dim, --batch) and the model"
        ) from exc
    return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}


class DeviceRunner:
    """Runs a session with inputs and outputs resident on the GPU (I/O binding), for honest GPU timing.

    Without binding, every run copies the inputs to the device and the outputs back, which on a small
    or pruned model can cost more than the model itself and hide any speedup.
    """

    def __init__(self, session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], *, device_id: int = 0,
                 outputs: Sequence[np.ndarray] | None = None):
        """``outputs``: arrays shaped and typed as the session's outputs (from a run of the same model without a
        CUDA graph): each output is then bound to a device buffer allocated once, before the first run, so
        every run writes to the same address. A CUDA graph needs it: onnxruntime captures a graph on an early
        run, and its replays write where that run wrote (outputs bound after it keep the first values)."""
        self.session = session
        self.binding = session.io_binding()
        # Keep the OrtValues alive as long as the binding refers to them.
        self._inputs = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), "cuda", device_id)
                        for k, v in feeds.items()}
        for name, value in self._inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        names = [out.name for out in session.get_outputs()]
        self._outputs: list[ort.OrtValue] = []
        if outputs is None:
            for name in names:
                self.binding.bind_output(name, "cuda", device_id)
        else:
            self._outputs += [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), "cuda", device_id)
                             for v in outputs]
            for name, value in zip(names, self._outputs, strict=True):
                self.binding.bind_ortvalue_output(name, value)

    def run(self) -> None:
        """One synchronous run; results stay on the device."""
        try:
            self.session.run_with_iobinding(self.binding)
        except ORT_ERRORS as exc:
            raise UnsupportedModelError(
                f"onnxruntime ({session_provider(self.session)}) failed to run with I/O binding: "
                f"{first_line(exc)}"
            ) from exc
        self.binding.synchronize_outputs()


def run_constant_graph(model: ModelProto, outputs: list[str]) -> dict[str, np.ndarray]:
    """Run an input-free model (a constant subgraph) once on the CPU and return the named outputs.

    The runner :func:`onnxprune.core.fold.fold_constants` is given: one thread, no provider choice, errors
    typed like every other session's.

    Raises:
        OnnxPruneError: onnxruntime refuses the graph or fails to run it.
    """
    session = create_session(model, provider="cpu", threads=1, name="constant subgraph")
    return run_session(session, {}, outputs=outputs, label="the constant subgraph")
