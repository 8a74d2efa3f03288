"""Run onnxruntime's transformer optimizer over transformer exports and judge the fused models.

Two steps, two environments:

* ``export`` (a venv with torch, transformers and sympy): exports small BERT,
  GPT-2 and ViT models with eager attention (the pattern the optimizer fuses into ``com.microsoft``
  ``Attention``; the SDPA pattern of today's default exports is left unfused), and also optimizes the
  existing real exports in ``~/.cache/onnxprune/real-exports/`` as they are (never rewritten: results go
  to ``~/.cache/onnxprune/fused-exports/``). With ``--ship`` the fused BERT is copied to
  ``models/fused/bert_fused.onnx`` for the tests.
* ``judge`` (the project's venv): for every fused model, the fused ops it holds, structured coverage,
  and a structured prune at ``--ratio`` proven by the oracle in onnxruntime at other batch/sequence sizes.

Example:
    .venv-export/bin/python tools/fused_exports.py export --ship
    .venv/bin/python tools/fused_exports.py judge
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

CACHE = Path.home() / ".cache" / "onnxprune"
REAL = CACHE / "real-exports"
OUT = CACHE / "fused-exports"
SHIP = Path(__file__).resolve().parents[1] / "models" / "fused" / "bert_fused.onnx"
SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
#: real exports and the optimizer's model_type for them
REAL_TYPES = {"hf_bert_legacy": "bert", "hf_gpt2_legacy": "gpt2", "hf_vit_legacy": "vit",
              "hf_llama_gqa_legacy": "gpt2", "hf_whisper_encoder_legacy": "bart"}


def _optimize(src: Path, dst: Path, model_type: str) -> dict[str, int]:
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type=model_type, num_heads=SMALL["num_attention_heads"],
                         hidden_size=SMALL["hidden_size"])
    opt.save_model_to_file(str(dst))
    return dict(collections.Counter(n.op_type for n in opt.model.graph.node if n.domain == "com.microsoft"))


def export(ship: bool) -> None:
    import torch
    import transformers as tf

    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    text_axes = {0: "batch", 1: "sequence"}
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 12:] = 0

    class Text(torch.nn.Module):
        def __init__(self, inner: Any, types: bool) -> None:
            super().__init__()
            self.inner, self.types = inner, types

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kw = {"token_type_ids": token_type_ids} if self.types else {}
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kw).to_tuple()[0]

    class Image(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: Any) -> Any:
            return self.inner(pixel_values=pixel_values).to_tuple()[0]

    bert = tf.BertModel(tf.BertConfig(vocab_size=1000, max_position_embeddings=128, attn_implementation="eager",
                                      **SMALL))
    gpt2 = tf.GPT2Model(tf.GPT2Config(vocab_size=1000, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                                      use_cache=False, attn_implementation="eager"))
    vit = tf.ViTModel(tf.ViTConfig(image_size=32, patch_size=8, attn_implementation="eager", **SMALL),
                      add_pooling_layer=False)
    cases = [
        ("eager_bert", "bert", Text(bert, True), (ids, mask, torch.zeros_like(ids)),
         ["input_ids", "attention_mask", "token_type_ids"]),
        ("eager_gpt2", "gpt2", Text(gpt2, False), (ids, mask), ["input_ids", "attention_mask"]),
        ("eager_vit", "vit", Image(vit), (torch.randn(2, 3, 32, 32),), ["pixel_values"]),
    ]
    report: dict[str, Any] = {}
    for name, model_type, module, args, names in cases:
        plain = OUT / f"{name}.onnx"
        axes = {n: ({0: "batch"} if n == "pixel_values" else text_axes) for n in names}
        axes["out"] = text_axes
        torch.onnx.export(module.eval(), args, str(plain), input_names=names, output_names=["out"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
        np.savez(OUT / f"{name}_fused.inputs.npz", **{n: a.numpy() for n, a in zip(names, args, strict=True)})
        report[name] = _optimize(plain, OUT / f"{name}_fused.onnx", model_type)
        print(f"{name}: {report[name]}")
    for name, model_type in REAL_TYPES.items():
        if (REAL / f"{name}.onnx").exists():
            report[name] = _optimize(REAL / f"{name}.onnx", OUT / f"{name}_fused.onnx", model_type)
            shutil.copyfile(REAL / f"{name}.inputs.npz", OUT / f"{name}_fused.inputs.npz")
            print(f"{name}: {report[name]}")
    (OUT / "fused_ops.json").write_text(json.dumps(report, indent=1))
    if ship:
        SHIP.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(OUT / "eager_bert_fused.onnx", SHIP)
        print(f"shipped {SHIP} ({SHIP.stat().st_size} bytes)")


def judge(ratio: float) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import onnxruntime as ort

    from onnxprune.core.io import load_model
    from onnxprune.runtime.feeds import index_bounds
    from onnxprune.structured.oracle import zeroed_reference
    from onnxprune.structured.prune import coverage, prune_structured

    failed = 0
    print(f"| model | fused ops | coverage | prunable groups | heads kept | oracle at {ratio} (batch 3, seq 11) |")
    print("|---|---|---:|---:|---|---|")
    for path in sorted(OUT.glob("*_fused.onnx")):
        model = load_model(path)
        ops = collections.Counter(n.op_type for n in model.graph.node if n.domain == "com.microsoft")
        result = prune_structured(model, ratio=ratio)
        cov = coverage(model, result.dg, dict(result.dg.shapes))
        heads = [f"{n.attribute[0].i}" for n in result.model.graph.node if n.op_type == "Attention"
                 for a in n.attribute if a.name == "num_heads"][:1]
        r = np.random.default_rng(0)
        bounds = index_bounds(model)
        feeds: dict[str, np.ndarray] = {}
        for vi in model.graph.input:
            shape = [3 if k == 0 else 11 if d.dim_param else d.dim_value
                     for k, d in enumerate(vi.type.tensor_type.shape.dim)]
            if vi.type.tensor_type.elem_type == 1:
                feeds[vi.name] = r.standard_normal(shape).astype(np.float32)
            elif "mask" in vi.name:
                feeds[vi.name] = np.ones(shape, np.int64 if vi.type.tensor_type.elem_type == 7 else np.int32)
            else:
                feeds[vi.name] = r.integers(0, bounds.get(vi.name, 2), shape).astype(
                    np.int64 if vi.type.tensor_type.elem_type == 7 else np.int32)
        ref = zeroed_reference(model, result.dg, result.plan)
        got = ort.InferenceSession(result.model.SerializeToString()).run(None, feeds)
        want = ort.InferenceSession(ref.SerializeToString()).run(None, feeds)
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(got, want, strict=True))
        scale = max(float(np.max(np.abs(b))) for b in want)
        ok = diff <= 1e-4 * max(1.0, scale)
        failed += not ok
        fused = ", ".join(f"{k}:{v}" for k, v in sorted(ops.items()))
        print(f"| {path.stem} | {fused} | {cov:.2f} | {len(result.dg.prunable_groups)} of {len(result.dg.groups)} | "
              f"{'/'.join(heads) or '-'} | {'pass' if ok else 'FAIL'}, max diff {diff:.2e} |")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    ex = sub.add_parser("export", help="export and optimize (needs torch, transformers, sympy)")
    ex.add_argument("--ship", action="store_true", help="copy the fused BERT to models/fused/")
    ju = sub.add_parser("judge", help="coverage and oracle of every fused model (the project's venv)")
    ju.add_argument("--ratio", type=float, default=0.3)
    args = parser.parse_args(argv)
    if args.step == "export":
        export(args.ship)
        return 0
    return judge(args.ratio)


if __name__ == "__main__":
    sys.exit(main())
