"""Export small, randomly initialised versions of the models real users bring, as the real exporters write them.

Why this script exists: onnxprune promises to be framework-agnostic, and that promise is only tested by the
files that Ultralytics, timm + torch.onnx (both exporters), Hugging Face transformers, tf2onnx, paddle2onnx,
onnxconverter-common (fp16) and onnxruntime's ``quantize_static`` (int8 QDQ) actually write: dynamic axes
named ``batch``/``sequence`` or ``-1``, shared initializers, Constant nodes, pixel-scale outputs, Q/DQ pairs.
Every model is built from a config with random weights (nothing is downloaded; normalization layers get
seeded trained-like statistics, see :func:`trained_like`), shrunk to a few MB, and
written to a cache folder with its example inputs (``NAME.inputs.npz``, keyed by ONNX input name) and a
``manifest.json`` (class, exporter, declared input dims, parameters, versions, and why anything was skipped).
``tools/real_exports_table.py`` and ``tests/test_real_exports.py`` (project venv) then prune whatever is there.

It runs in its own git-ignored venv, which neither the package nor CI ever needs. Install (torch and
torchvision first, pinned; everything else at the versions pip picks for Python 3.11)::

    python3 -m venv .venv-real && .venv-real/bin/pip install torch==2.14.1 torchvision==0.29.1
    .venv-real/bin/pip install timm transformers ultralytics onnx onnxruntime onnxscript onnxconverter-common
    .venv-real/bin/pip install tensorflow-cpu tf2onnx                    # optional: the keras family
    .venv-real/bin/pip install paddlepaddle opt-einsum==3.3.0             # optional: the paddle family,
    .venv-real/bin/pip install --no-deps paddle2onnx polygraphy           #   without paddle2onnx's onnx pin

paddle2onnx 2.1.0 pins onnx==1.17.0, which would downgrade the onnx the torch exporter uses; it runs with the
newer one, hence ``--no-deps`` (polygraphy is its constant folder).

A family whose packages are missing or whose exporter fails is skipped with the reason logged and recorded
in the manifest; the others still run. Run from the repository root::

    .venv-real/bin/python tools/export_real.py                       # ~/.cache/onnxprune/real-exports
    .venv-real/bin/python tools/export_real.py --out DIR --only hf timm
    .venv-real/bin/python tools/export_real.py --list

Each family runs in its own child process (torch, TensorFlow and Paddle never share one), one after the
other, with torch on one thread: the machine is shared. Rerunning a family replaces its models.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("export_real")

DEFAULT_OUT = Path("~/.cache/onnxprune/real-exports").expanduser()
#: Above this a model is reported as too big for the set (the issue asks for a few MB each).
SIZE_LIMIT = 10 * 2**20
SEED = 0
PACKAGES = ("torch", "torchvision", "timm", "transformers", "ultralytics", "onnx", "onnxruntime", "onnxscript",
            "onnxconverter-common", "tensorflow-cpu", "tf2onnx", "paddlepaddle", "paddle2onnx")


class Skip(Exception):
    """An export that cannot run here (package missing, exporter refuses): recorded, never fatal."""


@dataclass
class Context:
    """Where a family writes, and what it wrote or skipped (becomes that family's manifest part)."""

    out: Path
    family: str
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def attempt(self, name: str, fn: Callable[[], None]) -> None:
        """Run one export; any failure is logged and recorded as skipped with a one-line reason."""
        started = time.perf_counter()
        try:
            fn()
            log.info("%s: exported in %.1f s", name, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - a third-party exporter failing must not stop the others
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            log.warning("%s: skipped: %s", name, reason)
            self.skipped[name] = reason
            for stale in self.out.glob(f"{name}.*"):
                stale.unlink()

    def save(self, name: str, path: Path, feeds: Mapping[str, np.ndarray], *, cls: str, exporter: str) -> None:
        """Check ``path`` runs in onnxruntime on ``feeds``, move it (and its data) into the cache, record it."""
        import onnx
        import onnxruntime as ort

        target = self.out / f"{name}.onnx"
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        inits = {i.name for i in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in inits]
        names = [i.name for i in inputs]
        if set(names) - set(feeds):
            if len(feeds) != len(names):
                raise RuntimeError(f"export has inputs {names}, example inputs are {sorted(feeds)}")
            feeds = dict(zip(names, feeds.values(), strict=True))
        feeds = {n: np.ascontiguousarray(feeds[n]) for n in names}
        for stale in self.out.glob(f"{name}.*"):
            stale.unlink()
        external = any(path.parent.glob(path.name + ".data*"))  # the dynamo exporter's default
        if external:  # keep the exporter's choice of external data, under our name
            onnx.save(model, str(target), save_as_external_data=True, location=f"{name}.onnx.data",
                      all_tensors_to_one_file=True, size_threshold=1024)
        else:
            onnx.save(model, str(target))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        outputs = session.run(None, feeds)
        np.savez(self.out / f"{name}.inputs.npz", **feeds)
        size = sum(p.stat().st_size for p in self.out.glob(f"{name}.onnx*"))
        if size > SIZE_LIMIT:
            log.warning("%s: %.1f MB, above the %.0f MB the set aims for", name, size / 2**20, SIZE_LIMIT / 2**20)
        params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        self.models[name] = {
            "family": self.family, "class": cls, "exporter": exporter,
            "bytes": size, "params": params, "external_data": external,
            "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "inputs": {i.name: _declared(i) for i in inputs},
            "outputs": {o.name: _declared(o) for o in model.graph.output},
            "example_inputs": {n: list(v.shape) for n, v in feeds.items()},
            "example_outputs": {o.name: list(np.asarray(v).shape) for o, v in zip(session.get_outputs(), outputs,
                                                                                    strict=True)},
        }


def _declared(value_info: Any) -> list[Any]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else None
            for d in dims]


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="export-real-") as tmp:
        old = Path.cwd()
        os.chdir(tmp)  # some exporters (Ultralytics) write beside the current folder
        try:
            yield Path(tmp)
        finally:
            os.chdir(old)


def _seed_torch() -> Any:
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    return torch


# ------------------------------------------------------------------------------------------------- torch
def trained_like(model: Any) -> Any:
    """Give every normalization layer seeded, non-trivial affine parameters and running statistics.

    Why: a freshly initialised model is degenerate in ways no trained one is. timm zero-initialises the last
    BatchNorm of each residual block, and exporters fold BatchNorm into the Conv before it, so those convs
    would be all zeros; every LayerNorm would be the same ones/zeros tensor. Linear/Conv biases are left as
    the config initialises them (zeros included: exporters de-duplicate them, as on any fresh model).
    """
    import torch

    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for module in model.modules():
            for attr, low, high in (("weight", 0.5, 1.5), ("bias", -0.1, 0.1), ("running_mean", -0.1, 0.1),
                                    ("running_var", 0.5, 1.5)):
                tensor = getattr(module, attr, None)
                if tensor is None or not isinstance(tensor, torch.Tensor) or not _is_norm(module):
                    continue
                tensor.copy_(torch.rand(tensor.shape, generator=g) * (high - low) + low)
    return model


def _is_norm(module: Any) -> bool:
    return "Norm" in type(module).__name__  # BatchNorm2d, LayerNorm, GroupNorm, LlamaRMSNorm, LayerNorm2d, ...


def torch_export(model: Any, args: tuple[Any, ...], path: Path, *, input_names: list[str], output_names: list[str],
                 dynamic_axes: dict[str, dict[int, str]], dynamo: bool) -> None:
    """``torch.onnx.export`` as a user calls it: named inputs/outputs, dynamic axes, the exporter's defaults.

    With ``dynamo=True`` the same axes are given as ``dynamic_shapes`` (``torch.export.Dim`` named as the axis),
    which is what the new exporter reads.
    """
    import torch

    model.eval()
    with torch.no_grad():
        if not dynamo:
            torch.onnx.export(model, args, str(path), input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, dynamo=False)
            return
        dims: dict[str, Any] = {}
        shapes = []
        for name in input_names:
            axes = dynamic_axes.get(name, {})
            shapes.append({k: dims.setdefault(v, torch.export.Dim(v, min=1 if k == 0 else 2))
                           for k, v in axes.items()} or None)
        torch.onnx.export(model, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_shapes=tuple(shapes), dynamo=True)


def _both_exporters(ctx: Context, base: str, build: Callable[[], tuple[Any, dict[str, Any], list[str],
                                                                           dict[str, dict[int, str]]]],
                    *, cls: str, dynamo_flags: tuple[bool, ...] = (False, True)) -> None:
    """Export one model with the TorchScript exporter (``NAME_legacy``) and the dynamo exporter (``NAME_dynamo``)."""
    for dynamo in dynamo_flags:
        name = f"{base}_{'dynamo' if dynamo else 'legacy'}"

        def run(dynamo: bool = dynamo, name: str = name) -> None:
            model, example, outputs, axes = build()
            trained_like(model)
            with _scratch() as tmp:
                path = tmp / "model.onnx"
                torch_export(model, tuple(example.values()), path, input_names=list(example),
                             output_names=outputs, dynamic_axes=axes, dynamo=dynamo)
                ctx.save(name, path, {k: v.numpy() for k, v in example.items()}, cls=cls,
                         exporter=f"torch.onnx.export(dynamo={dynamo})")

        ctx.attempt(name, run)


# --------------------------------------------------------------------------------------------- ultralytics
def family_ultralytics(ctx: Context) -> None:
    """YOLOv8 detection (static and dynamic), segmentation, classification: Ultralytics' own exporter, default sizes.

    Built from the package's yaml configs (``YOLO('yolov8n.yaml')`` downloads nothing), written with the 'n'
    scale's width cut from 0.25 to 0.125 so the files stay under a few MB; the graphs are yolov8n's apart
    from channel counts.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import yaml
    from ultralytics import YOLO
    from ultralytics.utils import ROOT as UROOT

    def config(stem: str, tmp: Path) -> str:
        source = next(UROOT.glob(f"cfg/models/v8/{stem.replace('yolov8n', 'yolov8')}.yaml"))
        cfg = yaml.safe_load(source.read_text())
        depth, _, max_ch = cfg["scales"]["n"]
        cfg["scales"] = {"n": [depth, 0.125, max_ch]}
        path = tmp / f"{stem}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    for name, stem, imgsz, dynamic, cls in (
        ("yolov8n_det", "yolov8n", 640, False, "Ultralytics YOLOv8 detection"),
        ("yolov8n_det_dynamic", "yolov8n", 640, True, "Ultralytics YOLOv8 detection, dynamic axes"),
        ("yolov8n_seg", "yolov8n-seg", 640, False, "Ultralytics YOLOv8 segmentation"),
        ("yolov8n_cls", "yolov8n-cls", 224, False, "Ultralytics YOLOv8 classification"),
    ):
        def run(name: str = name, stem: str = stem, imgsz: int = imgsz, dynamic: bool = dynamic,
                cls: str = cls) -> None:
            torch = _seed_torch()
            with _scratch() as tmp:
                model = YOLO(config(stem, tmp))
                exported = Path(model.export(format="onnx", imgsz=imgsz, dynamic=dynamic, simplify=False,
                                             device="cpu"))
                batch = 2 if dynamic else 1
                x = torch.rand(batch, 3, imgsz, imgsz).numpy()
                ctx.save(name, exported, {"images": x}, cls=cls,
                         exporter=f"ultralytics YOLO.export(format='onnx', imgsz={imgsz}, dynamic={dynamic})")

        ctx.attempt(name, run)


# ---------------------------------------------------------------------------------------------------- timm
def family_timm(ctx: Context) -> None:
    """timm CNNs (ResNet, EfficientNet, RegNet), a CNN/transformer hybrid (MobileViT), DeiT and Swin.

    ``pretrained=False`` and small widths/depths through timm's own model arguments; 10 classes. Exported with
    the TorchScript exporter and a dynamic batch axis, as timm's ``onnx_export.py`` does; the ResNet and DeiT
    also with the dynamo exporter.
    """
    import timm

    def create(arch: str, **kwargs: Any) -> Callable[[], Any]:
        return lambda: timm.create_model(arch, pretrained=False, num_classes=10, **kwargs)

    def efficientnet_b0_half() -> Any:
        # B0's blocks and depth at half width (timm's own generator; 'efficientnet_b0' fixes the multiplier)
        from timm.models.efficientnet import _gen_efficientnet

        return _gen_efficientnet("efficientnet_b0", channel_multiplier=0.5, pretrained=False, num_classes=10)

    specs: list[tuple[str, Callable[[], Any], int, str, bool]] = [
        ("timm_resnet18", create("resnet18", channels=(16, 32, 64, 128), stem_width=16), 64,
         "timm ResNet-18, widths 16-128", True),
        ("timm_efficientnet_b0", efficientnet_b0_half, 64, "timm EfficientNet-B0 at half width", False),
        ("timm_regnetx_002", create("regnetx_002"), 64, "timm RegNetX-200MF (grouped convs)", False),
        ("timm_mobilevit_xxs", create("mobilevit_xxs"), 64, "timm MobileViT-XXS (CNN/transformer hybrid)", False),
        ("timm_deit_tiny", create("deit_tiny_patch16_224", depth=2, embed_dim=96, num_heads=3), 224,
         "timm DeiT-Tiny config, 2 blocks, dim 96", True),
        ("timm_swin_tiny", create("swin_tiny_patch4_window7_224", embed_dim=24, depths=(2, 2, 2, 2),
                                  num_heads=(1, 2, 4, 8)), 224, "timm Swin-Tiny config, dim 24", False),
    ]
    for name, build, size, cls, with_dynamo in specs:
        for dynamo in (False, True) if with_dynamo else (False,):
            full = f"{name}_dynamo" if dynamo else name

            def run(build: Callable[[], Any] = build, size: int = size, cls: str = cls, dynamo: bool = dynamo,
                    full: str = full) -> None:
                torch = _seed_torch()
                model = trained_like(build())
                x = torch.randn(2, 3, size, size)
                with _scratch() as tmp:
                    path = tmp / "model.onnx"  # never the cache's name: onnx refuses to overwrite .data
                    torch_export(model, (x,), path, input_names=["input"], output_names=["logits"],
                                 dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=dynamo)
                    ctx.save(full, path, {"input": x.numpy()}, cls=cls,
                             exporter=f"torch.onnx.export(dynamo={dynamo})")

            ctx.attempt(full, run)


# ------------------------------------------------------------------------------------------------- resnest
def family_resnest(ctx: Context) -> None:
    """timm ResNeSt (split attention): resnest14d's layout at widths 16-128, radix 2, cardinality 1 and 2.

    Why its own family: split attention reads ``RC // radix`` from a run-time ``Shape`` and softmaxes over the
    radix axis (``rsoftmax``), the one attention form a CNN export carries; rerunning it leaves the timm
    family's files alone. Built with timm's own ResNeSt model (``pretrained=False``, 10 classes, one block per
    stage), exported with both torch exporters and a dynamic batch axis, 64x64 inputs.
    """
    import timm

    def build(cardinality: int) -> Callable[[], tuple[Any, dict[str, Any], list[str], dict[str, dict[int, str]]]]:
        def make() -> tuple[Any, dict[str, Any], list[str], dict[str, dict[int, str]]]:
            torch = _seed_torch()
            model = timm.create_model("resnest14d", pretrained=False, num_classes=10, channels=(16, 32, 64, 128),
                                      stem_width=16, cardinality=cardinality)
            example = {"input": torch.randn(2, 3, 64, 64)}
            return model, example, ["logits"], {"input": {0: "batch"}, "logits": {0: "batch"}}

        return make

    for base, cardinality, cls in (
        ("timm_resnest_r2", 1, "timm ResNeSt-14d layout, widths 16-128, radix 2 (split attention)"),
        ("timm_resnest_r2c2", 2, "timm ResNeSt-14d layout, widths 16-128, radix 2, cardinality 2 (split attention)"),
    ):
        _both_exporters(ctx, base, build(cardinality), cls=cls)


# ------------------------------------------------------------------------------------------ hugging face
def family_hf(ctx: Context) -> None:
    """BERT, GPT-2, Llama (grouped-query attention), ViT, Whisper encoder, wav2vec2: tiny transformers configs.

    Hidden 64, 2 layers, 4 heads (Llama: 2 key/value heads), random weights; each through both torch
    exporters, with the ``batch``/``sequence`` axes a user marks dynamic. A thin wrapper fixes the argument
    order and returns the outputs as a tuple, as exporters of these models do.
    """
    import transformers as tf

    torch = _seed_torch()

    class Wrap(torch.nn.Module):
        """Positional arguments in the order of ``names`` (torch.export needs named ones), tuple outputs."""

        def __init__(self, inner: Any, names: list[str]) -> None:
            super().__init__()
            self.inner, self.names = inner, names

        def run(self, **kwargs: Any) -> tuple[Any, ...]:
            return tuple(self.inner(**kwargs).to_tuple())

    class One(Wrap):
        def forward(self, x: Any) -> tuple[Any, ...]:
            return self.run(**{self.names[0]: x})

    class Two(Wrap):
        def forward(self, input_ids: Any, attention_mask: Any) -> tuple[Any, ...]:
            return self.run(input_ids=input_ids, attention_mask=attention_mask)

    class Three(Wrap):
        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> tuple[Any, ...]:
            return self.run(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
    text_axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                 "token_type_ids": {0: "batch", 1: "sequence"}}

    def tokens(with_types: bool = False) -> dict[str, Any]:
        g = torch.Generator().manual_seed(SEED)
        ids = torch.randint(0, 1000, (2, 16), generator=g)
        mask = torch.ones(2, 16, dtype=torch.int64)
        mask[1, 12:] = 0
        out = {"input_ids": ids, "attention_mask": mask}
        if with_types:
            out["token_type_ids"] = torch.zeros(2, 16, dtype=torch.int64)
        return out

    def bert() -> tuple[Any, dict[str, Any], list[str], dict[str, dict[int, str]]]:
        torch.manual_seed(SEED)
        cfg = tf.BertConfig(vocab_size=1000, max_position_embeddings=128, **small)
        example = tokens(with_types=True)
        outs = ["last_hidden_state", "pooler_output"]
        axes = {**text_axes, "last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}}
        return Three(tf.BertModel(cfg), list(example)), example, outs, axes

    def bert_20mb() -> tuple[Any, dict[str, Any], list[str], dict[str, dict[int, str]]]:
        # the one model above onnxprune's 16 MB in-memory session limit (runtime/session.py), so that its
        # streamed, file-backed zeroed reference is exercised on an export with Constant nodes
        torch.manual_seed(SEED)
        cfg = tf.BertConfig(vocab_size=1000, max_position_embeddings=128, hidden_size=256, num_hidden_layers=6,
                            num_attention_heads=4, intermediate_size=1024)
        example = tokens(with_types=True)
        outs = ["last_hidden_state", "pooler_output"]
        axes = {**text_axes, "last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}}
        return Three(tf.BertModel(cfg), list(example)), example, outs, axes

    def gpt2() -> tuple[Any, dict[str, Any], list[str], dict[str, dict[int, str]]]:
        torch.manual_seed(SEED)
        cfg = tf.GPT2Config(vocab_size=1000, n_positions=128, n_embd=64, n_layer=2, n_head=4, use_cache=False)
        example = tokens()
        return (Two(tf.GPT2LMHeadModel(cfg), list(example)), example, ["logits"],
                {**text_axes, "logits": {0: "batch", 1: "sequence"}})

    def llama() -> tuple[Any, dict[str, Any], list[str], dict[str, dict[int, str]]]:
        torch.manual_seed(SEED)
        cfg = tf.LlamaConfig(vocab_size=1000, max_position_embeddings=128, num_key_value_heads=2, use_cache=False,
                             **small)
        example = tokens()
        return (Two(tf.LlamaForCausalLM(cfg), list(example)), example, ["logits"],
                {**text_axes, "logits": {0: "batch", 1: "sequence"}})

    def vit() -> tuple[Any, dict[str, Any], list[str], dict[str, dict[int, str]]]:
        torch.manual_seed(SEED)
        cfg = tf.ViTConfig(image_size=32, patch_size=8, num_labels=10, **small)
        example = {"pixel_values": torch.randn(2, 3, 32, 32)}
        return (One(tf.ViTForImageClassification(cfg), list(example)), example, ["logits"],
                {"pixel_values": {0: "batch"}, "logits": {0: "batch"}})

    def whisper() -> tuple[Any, dict[str, Any], list[str], dict[str, dict[int, str]]]:
        torch.manual_seed(SEED)
        cfg = tf.WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                               decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128, num_mel_bins=80,
                               max_source_positions=50, vocab_size=1000, pad_token_id=0,
                               bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
        example = {"input_features": torch.randn(2, 80, 100)}
        return (One(tf.WhisperModel(cfg).get_encoder(), list(example)), example, ["last_hidden_state"],
                {"input_features": {0: "batch"}, "last_hidden_state": {0: "batch"}})

    def wav2vec2() -> tuple[Any, dict[str, Any], list[str], dict[str, dict[int, str]]]:
        torch.manual_seed(SEED)
        cfg = tf.Wav2Vec2Config(vocab_size=32, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                                num_conv_pos_embedding_groups=4, **small)
        example = {"input_values": torch.randn(2, 3200)}
        return (One(tf.Wav2Vec2ForCTC(cfg), list(example)), example, ["logits"],
                {"input_values": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "frames"}})

    for base, build, cls in (
        ("hf_bert", bert, "Hugging Face BERT (hidden 64, 2 layers, 4 heads)"),
        ("hf_gpt2", gpt2, "Hugging Face GPT-2 LM head (hidden 64, 2 layers, 4 heads)"),
        ("hf_llama_gqa", llama, "Hugging Face Llama causal LM, grouped-query attention (4 heads, 2 kv heads)"),
        ("hf_vit", vit, "Hugging Face ViT classifier (32x32, patch 8)"),
        ("hf_whisper_encoder", whisper, "Hugging Face Whisper encoder (80 mel bins, 100 frames)"),
        ("hf_wav2vec2", wav2vec2, "Hugging Face wav2vec2 CTC (raw audio)"),
    ):
        _both_exporters(ctx, base, build, cls=cls)
    _both_exporters(ctx, "hf_bert_20mb", bert_20mb, cls="Hugging Face BERT (hidden 256, 6 layers): above 16 MB",
                    dynamo_flags=(False,))


# --------------------------------------------------------------------------------------------------- keras
def family_keras(ctx: Context) -> None:
    """Keras MobileNetV2 (alpha 0.35) and a small functional CNN, through tf2onnx with a dynamic batch."""
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        raise Skip(f"tensorflow and tf2onnx are not installed ({exc}); pip install tensorflow-cpu tf2onnx") from exc
    tf.random.set_seed(SEED)

    def mobilenet() -> Any:
        return tf.keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10)

    def small_cnn() -> Any:
        inp = tf.keras.Input((32, 32, 3), name="image")
        x = tf.keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inp)
        x = tf.keras.layers.BatchNormalization()(x)
        x = tf.keras.layers.ReLU()(x)
        y = tf.keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
        x = tf.keras.layers.Add()([x, y])
        x = tf.keras.layers.MaxPooling2D()(x)
        x = tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
        x = tf.keras.layers.GlobalAveragePooling2D()(x)
        x = tf.keras.layers.Dense(64, activation="relu")(x)
        return tf.keras.Model(inp, tf.keras.layers.Dense(10)(x))

    for name, build, size, cls in (("keras_mobilenetv2", mobilenet, 96, "Keras MobileNetV2 alpha 0.35 (NHWC)"),
                                   ("keras_small_cnn", small_cnn, 32, "Keras functional CNN, residual (NHWC)")):
        def run(name: str = name, build: Callable[[], Any] = build, size: int = size, cls: str = cls) -> None:
            model = build()
            spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="input"),)
            fn = tf.function(lambda x, model=model: model(x, training=False))
            with _scratch() as tmp:
                path = tmp / f"{name}.onnx"
                tf2onnx.convert.from_function(fn, input_signature=spec, output_path=str(path))
                x = np.random.default_rng(SEED).standard_normal((2, size, size, 3)).astype(np.float32)
                ctx.save(name, path, {"input": x}, cls=cls, exporter="tf2onnx.convert.from_function")

        ctx.attempt(name, run)


# -------------------------------------------------------------------------------------------------- paddle
def family_paddle(ctx: Context) -> None:
    """PaddlePaddle MobileNetV3-Small (scale 0.5) and a tiny CRNN-style OCR recognizer, through paddle2onnx."""
    try:
        import paddle
        import paddle2onnx
    except ImportError as exc:
        raise Skip(f"paddlepaddle and paddle2onnx are not installed ({exc}); pip install paddlepaddle "
                   f"paddle2onnx") from exc
    paddle.seed(SEED)
    nn = paddle.nn

    class Crnn(nn.Layer):
        """Conv stack -> collapse height -> BiLSTM -> per-step classes (PaddleOCR's recognizer shape)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2D(3, 16, 3, padding=1), nn.BatchNorm2D(16), nn.ReLU(), nn.MaxPool2D(2),
                nn.Conv2D(16, 32, 3, padding=1), nn.BatchNorm2D(32), nn.ReLU(), nn.MaxPool2D((2, 1)),
                nn.Conv2D(32, 48, 3, padding=1), nn.BatchNorm2D(48), nn.ReLU(), nn.AdaptiveAvgPool2D((1, None)),
            )
            self.rnn = nn.LSTM(48, 32, direction="bidirect")
            self.head = nn.Linear(64, 37)

        def forward(self, x: Any) -> Any:
            f = self.conv(x).squeeze(2).transpose([0, 2, 1])
            y, _ = self.rnn(f)
            return nn.functional.softmax(self.head(y), axis=-1)

    for name, build, shape, cls in (
        ("paddle_mobilenetv3", lambda: paddle.vision.models.mobilenet_v3_small(scale=0.5, num_classes=10),
         (3, 64, 64), "PaddlePaddle MobileNetV3-Small scale 0.5"),
        ("paddle_crnn_ocr", Crnn, (3, 32, 100), "PaddlePaddle CRNN-style OCR recognizer (conv + BiLSTM)"),
    ):
        def run(name: str = name, build: Callable[[], Any] = build, shape: tuple[int, ...] = shape,
                cls: str = cls) -> None:
            model = build()
            model.eval()
            spec = [paddle.static.InputSpec([None, *shape], "float32", "x")]
            with _scratch() as tmp:
                prefix = tmp / "inference"
                paddle.jit.save(model, str(prefix), input_spec=spec)
                program = next(p for p in (tmp / "inference.json", tmp / "inference.pdmodel") if p.exists())
                path = tmp / f"{name}.onnx"
                paddle2onnx.export(str(program), str(tmp / "inference.pdiparams"), str(path), opset_version=11)
                x = np.random.default_rng(SEED).standard_normal((2, *shape)).astype(np.float32)
                ctx.save(name, path, {"x": x}, cls=cls,
                         exporter="paddle.jit.save + paddle2onnx.export(opset_version=11)")

        ctx.attempt(name, run)


# ---------------------------------------------------------------------------------------------------- post
def family_post(ctx: Context) -> None:
    """An fp16 conversion and an int8 QDQ quantization of the timm ResNet export, and int8 QDQ quantizations
    of the Hugging Face ViT and BERT exports (run the timm and hf families first)."""
    import onnx

    source = ctx.out / "timm_resnet18.onnx"
    if not source.is_file():
        raise Skip(f"{source} is missing; export the timm family first")
    with np.load(ctx.out / "timm_resnet18.inputs.npz") as data:
        x = data["input"]

    def fp16() -> None:
        from onnxconverter_common import float16

        model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=False)
        with _scratch() as tmp:
            path = tmp / "fp16.onnx"
            onnx.save(model, str(path))
            ctx.save("timm_resnet18_fp16", path, {"input": x.astype(np.float16)},
                     cls="fp16 conversion of the timm ResNet-18",
                     exporter="onnxconverter_common.float16.convert_float_to_float16(keep_io_types=False)")

    def qdq(name: str, base: str, what: str) -> None:
        """``base`` quantized by onnxruntime's static QDQ quantizer (per-channel int8 weights, uint8
        activations), calibrated on its example inputs (a ResNet on 4 seeded random batches instead)."""
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        with np.load(ctx.out / f"{base}.inputs.npz") as data:
            feeds = dict(data)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                rng = np.random.default_rng(SEED)
                if base == "timm_resnet18":
                    self.batches = iter([{"input": rng.standard_normal(x.shape).astype(np.float32)}
                                         for _ in range(4)])
                else:
                    self.batches = iter([feeds])

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.batches, None)

        with _scratch() as tmp:
            path = tmp / "qdq.onnx"
            quantize_static(str(ctx.out / f"{base}.onnx"), str(path), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
            ctx.save(name, path, feeds, cls=f"int8 QDQ quantization (per-channel) of the {what}",
                     exporter="onnxruntime.quantization.quantize_static(QDQ, per_channel=True)")

    ctx.attempt("timm_resnet18_fp16", fp16)
    ctx.attempt("timm_resnet18_int8_qdq", lambda: qdq("timm_resnet18_int8_qdq", "timm_resnet18", "timm ResNet-18"))
    for base, what in (("hf_vit_legacy", "Hugging Face ViT (legacy export)"),
                       ("hf_bert_legacy", "Hugging Face BERT (legacy export)")):
        if (ctx.out / f"{base}.onnx").is_file():
            ctx.attempt(f"{base}_int8_qdq", lambda base=base, what=what: qdq(f"{base}_int8_qdq", base, what))


FAMILIES: dict[str, Callable[[Context], None]] = {
    "ultralytics": family_ultralytics, "timm": family_timm, "resnest": family_resnest, "hf": family_hf,
    "keras": family_keras, "paddle": family_paddle, "post": family_post,
}


# ------------------------------------------------------------------------------------------------- driver
def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def run_family(family: str, out: Path) -> None:
    """In this process: export one family and write its manifest part ``.manifest-FAMILY.json``."""
    ctx = Context(out=out, family=family)
    try:
        FAMILIES[family](ctx)
    except Skip as exc:
        log.warning("%s: family skipped: %s", family, exc)
        ctx.skipped[family] = str(exc)
    part = {"models": ctx.models, "skipped": ctx.skipped}
    (out / f".manifest-{family}.json").write_text(json.dumps(part, indent=1, sort_keys=True))


def merge_manifest(out: Path) -> dict[str, Any]:
    """Combine every family's part into ``manifest.json`` (models still on disk only).

    Versions of packages this venv lacks are kept from the manifest already there: a family rerun from another
    venv (``--only resnest`` from the torch-only one) must not erase what the other families were exported with.
    """
    models: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for part in sorted(out.glob(".manifest-*.json")):
        data = json.loads(part.read_text())
        models.update({k: v for k, v in data["models"].items() if (out / f"{k}.onnx").is_file()})
        skipped.update(data["skipped"])
    previous = out / "manifest.json"
    versions = json.loads(previous.read_text()).get("versions", {}) if previous.is_file() else {}
    manifest = {"versions": {**versions, **_versions()}, "python": sys.version.split()[0], "models": models,
                "skipped": skipped}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Export every family (each in a child process, one after the other) and merge the manifest."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"cache folder (default {DEFAULT_OUT})")
    parser.add_argument("--only", nargs="*", choices=sorted(FAMILIES), help="only these families")
    parser.add_argument("--family", choices=sorted(FAMILIES), help=argparse.SUPPRESS)  # the child's job
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per family (default 1800)")
    parser.add_argument("--list", action="store_true", help="list the families and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    if args.list:
        for name, fn in FAMILIES.items():
            print(f"{name:<12} {(fn.__doc__ or '').splitlines()[0]}")
        return 0
    out = args.out.expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if args.family:
        run_family(args.family, out)
        return 0
    families = args.only or [f for f in FAMILIES if f != "post"] + ["post"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1",
               TF_NUM_INTEROP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    for family in families:
        started = time.perf_counter()
        log.info("family %s: starting", family)
        try:
            proc = subprocess.run([sys.executable, __file__, "--family", family, "--out", str(out)], env=env,
                                  timeout=args.timeout, check=False)
            status = f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            status = f"timed out after {args.timeout:.0f} s"
        log.info("family %s: %s in %.0f s", family, status, time.perf_counter() - started)
    manifest = merge_manifest(out)
    log.info("%d models in %s; skipped: %s", len(manifest["models"]), out,
             "; ".join(f"{k}: {v}" for k, v in manifest["skipped"].items()) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
