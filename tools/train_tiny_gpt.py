"""Train a tiny GPT-style byte-level language model on the Python standard library, export it to ONNX.

Why this script exists: pruning a language model is judged by held-out perplexity, and onnxprune's tests and
tables need one that is small, trained on real text, reproducible offline and free of any download. The
text is the ``.py`` sources of the standard library of the Python that runs this script
(``sysconfig.get_paths()['stdlib']``; ``site-packages``, ``test``/``tests`` and ``idlelib`` left out), read
as bytes, so the vocabulary is the 256 byte values and no tokenizer is needed.

Model: pre-norm decoder (LayerNorm → causal multi-head attention → residual; LayerNorm → GELU MLP →
residual; a final LayerNorm), learned position embeddings, an untied LM head by default (``--tie`` ties it to
the token embedding). Defaults: d_model 96, 4 heads, 4 layers, MLP 384, context 128: about 0.5 M
parameters, a 2 MB ONNX file.

Split, by file (a hash of the path relative to the stdlib, so it is the same on every machine with the same
Python): 90 % train, 5 % calibration, 5 % held-out. Calibration and held-out windows are consecutive,
non-overlapping ``--context``-byte windows of their files' concatenation, the first ``--calib-windows`` /
``--heldout-windows`` of them.

Outputs:
    models/tiny_gpt.onnx           legacy exporter (``torch.onnx.export(dynamo=False)``), opset 17
    ~/.cache/onnxprune/tiny_gpt/tiny_gpt_dynamo.onnx   the dynamo exporter (``dynamo=True``)
    models/tiny_gpt_calib.npz      ``input_ids`` int64 [N, T] calibration windows
    models/tiny_gpt_heldout.npz    ``input_ids`` int64 [N, T] held-out windows
    models/tiny_gpt.json           training record: sizes, steps, time, perplexities (model vs unigram)
    models/manifest.json, MANIFEST.md   this model's entry (the other entries are kept)

Both exports take ``input_ids`` int64 ``[batch, sequence]`` (sequence up to the context) and give ``logits``
float32 ``[batch, sequence, 256]``; each is checked against torch in onnxruntime. Run it with a venv that has
torch and onnxscript (never a dependency of onnxprune)::

    /work/venv-torch/bin/python tools/train_tiny_gpt.py                    # 10 min at most, 1 thread
    /work/venv-torch/bin/python tools/train_tiny_gpt.py --steps 50 --out /tmp/g   # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
VOCAB = 256


@dataclass(frozen=True)
class GPTConfig:
    """Shape of the model; the defaults give a ~2 MB ONNX file."""

    d_model: int = 96
    n_heads: int = 4
    n_layers: int = 4
    d_mlp: int = 384
    context: int = 128
    tie: bool = False


class Block(nn.Module):
    """One pre-norm decoder block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.k = nn.Linear(cfg.d_model, cfg.d_model)
        self.v = nn.Linear(cfg.d_model, cfg.d_model)
        self.o = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.up = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.down = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.register_buffer("causal", torch.tril(torch.ones(cfg.context, cfg.context, dtype=torch.bool)),
                             persistent=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, e = x.shape
        h = self.n_heads
        q = self.q(x).view(b, t, h, e // h).transpose(1, 2)
        k = self.k(x).view(b, t, h, e // h).transpose(1, 2)
        v = self.v(x).view(b, t, h, e // h).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(e // h))
        scores = scores.masked_fill(~self.causal[:t, :t], float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, e))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class TinyGPT(nn.Module):
    """Byte-level causal LM: token + learned position embeddings, pre-norm blocks, final LayerNorm, head."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(VOCAB, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, VOCAB, bias=False)
        if cfg.tie:
            self.head.weight = self.tok.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        for blk in self.blocks:  # GPT-2's scaled init of the projections that write the stream
            for proj in (blk.o, blk.down):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layers))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.tok(input_ids) + self.pos(torch.arange(t, device=input_ids.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def stdlib_files() -> list[tuple[str, Path]]:
    """The stdlib's ``.py`` files as (path relative to the stdlib, path), sorted, test and vendor dirs out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if SKIP_DIRS.isdisjoint(rel.parts[:-1]) and p.is_file():
            out.append((rel.as_posix(), p))
    return sorted(out)


def split_of(rel: str) -> str:
    """train (90 %), calib (5 %) or heldout (5 %), from a hash of the relative path: stable across machines."""
    bucket = int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 90 else ("calib" if bucket < 95 else "heldout")


def load_splits() -> dict[str, np.ndarray]:
    """Each split's files concatenated as one uint8 stream (files joined by a blank line)."""
    parts: dict[str, list[bytes]] = {"train": [], "calib": [], "heldout": []}
    for rel, path in stdlib_files():
        parts[split_of(rel)].append(path.read_bytes())
    return {k: np.frombuffer(b"\n\n".join(v), dtype=np.uint8) for k, v in parts.items()}


def windows(stream: np.ndarray, context: int, count: int) -> np.ndarray:
    """The first ``count`` consecutive non-overlapping windows of ``context`` bytes, int64 [count, context]."""
    n = min(count, len(stream) // context)
    return stream[: n * context].reshape(n, context).astype(np.int64)


def unigram_perplexity(train: np.ndarray, ids: np.ndarray) -> float:
    """Perplexity of the predicted tokens (positions 1..T-1) under add-one-smoothed train byte frequencies."""
    counts = np.bincount(train, minlength=VOCAB).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[ids[:, 1:]].mean()))


@torch.no_grad()
def model_perplexity(model: TinyGPT, ids: np.ndarray, batch: int = 64) -> float:
    """Next-token perplexity of ``model`` on ``ids`` (every position predicts the next one)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(ids), batch):
        x = torch.from_numpy(ids[i:i + batch])
        logits = model(x)[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += x[:, 1:].numel()
    model.train()
    return math.exp(total / count)


def train(model: TinyGPT, data: np.ndarray, args: argparse.Namespace) -> tuple[int, float, list[float]]:
    """AdamW with warm-up and cosine decay on random windows, over ``--steps`` or ``--max-minutes``.

    The decay follows whichever runs out first (progress = max(step / steps, elapsed / budget)), so a busy
    machine still ends with a fully decayed learning rate inside the time budget; on a quiet one the run is
    step-determined and reproducible.
    """
    gen = np.random.default_rng(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    ctx = model.cfg.context
    start = time.perf_counter()
    losses: list[float] = []
    step = 0
    budget = args.max_minutes * 60
    for step in range(1, args.steps + 1):
        progress = min(1.0, max(step / args.steps, (time.perf_counter() - start) / budget))
        lr = args.lr * min(step / args.warmup, 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        offsets = gen.integers(0, len(data) - ctx - 1, size=args.batch)
        chunk = torch.from_numpy(np.stack([data[o:o + ctx + 1] for o in offsets]).astype(np.int64))
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), chunk[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        elapsed = time.perf_counter() - start
        if step % 100 == 0:
            print(f"step {step}/{args.steps}  loss {np.mean(losses[-100:]):.3f}  lr {lr:.2e}  {elapsed:.0f}s",
                  flush=True)
        if elapsed >= budget:
            print(f"stopping at step {step}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    return step, time.perf_counter() - start, losses


def export_legacy(model: TinyGPT, path: Path) -> None:
    """TorchScript exporter, opset 17, dynamic batch and sequence axes."""
    example = torch.zeros(2, 16, dtype=torch.int64)
    torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                    "logits": {0: "batch", 1: "sequence"}})


def export_dynamo(model: TinyGPT, path: Path) -> None:
    """torch.export-based exporter, dynamic batch and sequence (at most the context) axes."""
    example = torch.zeros(2, 16, dtype=torch.int64)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=2, max=model.cfg.context)
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=["input_ids"],
                                output_names=["logits"], dynamic_shapes={"input_ids": {0: batch, 1: seq}})
    program.save(str(path))


def check_export(model: TinyGPT, path: Path, ids: np.ndarray) -> float:
    """Largest |ORT − torch| of the logits on two shapes (dynamic axes really dynamic)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for x in (ids[:3, :model.cfg.context], ids[3:8, :37]):
            got = sess.run(["logits"], {"input_ids": x})[0]
            want = model(torch.from_numpy(x)).numpy()
            worst = max(worst, float(np.abs(got - want).max()))
    return worst


def save_npz(path: Path, ids: np.ndarray) -> None:
    """Compressed npz with one ``input_ids`` array (byte values compress ~8x from int64)."""
    with path.open("wb") as f:
        np.savez_compressed(f, input_ids=ids)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_entry(out: Path, record: dict[str, object]) -> dict[str, object]:
    """The model's entry in ``models/manifest.json``, in the fields ``tools/export_models.py`` writes."""
    import onnx
    import onnxruntime as ort

    sys.path.insert(0, str(ROOT))
    from onnxprune.core.stats import model_stats

    path = out / "tiny_gpt.onnx"
    model = onnx.load(str(path))
    context = int(record["config"]["context"])  # type: ignore[index]
    stats = model_stats(model, dims={"batch": 1, "sequence": context})
    ids = np.load(out / "tiny_gpt_heldout.npz")["input_ids"][:3]
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"],
                                                                                  {"input_ids": ids})[0]
    diff = float(record["export_max_abs_diff"]["tiny_gpt.onnx"])  # type: ignore[index]
    cfg = record["config"]
    return {
        "file": path.name, "sha256": _sha256(path), "bytes": path.stat().st_size,
        "source": f"tools/train_tiny_gpt.py (PyTorch {record['torch']}), class TinyGPT, "
                  "torch.onnx.export(dynamo=False)",
        "recipe": f"byte-level causal LM on the Python {record['python']} standard library's .py files "
                  f"(split by file: 90% train, 5% calibration, 5% held-out): pre-norm GPT, d_model "
                  f"{cfg['d_model']}, {cfg['n_heads']} heads, {cfg['n_layers']} layers, GELU MLP "  # type: ignore[index]
                  f"{cfg['d_mlp']}, context {cfg['context']}, learned positions, "  # type: ignore[index]
                  f"{'tied' if cfg['tie'] else 'untied'} LM head; AdamW lr {record['lr']}, batch "  # type: ignore[index]
                  f"{record['batch']}, {record['steps']} steps in {record['train_seconds']} s on "
                  f"{record['threads']} thread(s); held-out perplexity {record['heldout_perplexity']:.3f} "
                  f"(unigram {record['heldout_unigram_perplexity']:.3f})",
        "trained": True, "params": stats.params, "macs": stats.macs, "ops": stats.op_histogram,
        "opset": {imp.domain or "ai.onnx": int(imp.version) for imp in model.opset_import},
        "inputs": "`input_ids` int64[batch,sequence]", "outputs": "`logits` float32[batch,sequence,256]",
        "ort_vs_source_rel": diff / float(np.abs(logits).max()),
        "accuracy": None, "source_accuracy": None,
        "perplexity": {"heldout": record["heldout_perplexity"], "unigram": record["heldout_unigram_perplexity"]},
        "data": {kind: {"file": f"tiny_gpt_{kind}.npz", "sha256": _sha256(out / f"tiny_gpt_{kind}.npz"),
                        "bytes": (out / f"tiny_gpt_{kind}.npz").stat().st_size} for kind in ("calib", "heldout")},
    }


def write_manifest(out: Path) -> None:
    """Add (or replace) this model's entry in ``manifest.json`` and its row and section in ``MANIFEST.md``.

    Why here and not in ``tools/export_models.py``: that script needs torchvision and scikit-learn and
    rebuilds the digits models; this model has its own recipe. ``export_models.py`` keeps entries it does not
    build, so either script can run alone.
    """
    record = json.loads((out / "tiny_gpt.json").read_text())
    entry = manifest_entry(out, record)
    row = (f"| `tiny_gpt.onnx` | yes | {entry['params']} | {entry['macs']} | {entry['bytes']} | "
           f"{entry['inputs']} | — (perplexity {record['heldout_perplexity']:.3f}) |")
    data = "".join(f"\n- {k} data: `{d['file']}`, {d['bytes']} bytes, sha256 `{d['sha256']}`"
                   for k, d in entry["data"].items())  # type: ignore[attr-defined]
    section = (f"## tiny_gpt\n\n- source: {entry['source']}\n- how: {entry['recipe']}\n"
               f"- file: `tiny_gpt.onnx`, {entry['bytes']} bytes, sha256 `{entry['sha256']}`\n"
               f"- params: {entry['params']}; MACs at batch 1, sequence {record['config']['context']}: "
               f"{entry['macs']}\n- inputs: {entry['inputs']}; outputs: {entry['outputs']}\n"
               f"- held-out perplexity (onnxruntime, `onnxprune eval models/tiny_gpt.onnx --perplexity "
               f"models/tiny_gpt_heldout.npz`): {record['heldout_perplexity']:.3f}; unigram of the training "
               f"bytes: {record['heldout_unigram_perplexity']:.3f}\n- the dynamo export "
               f"(`torch.onnx.export(dynamo=True)`) is written to `~/.cache/onnxprune/tiny_gpt/` (not shipped)\n"
               f"- reproducibility: seeded, but the learning-rate decay follows `--max-minutes` when the steps "
               f"do not fit in it, so a busy machine trains fewer steps (this file: {record['steps']} steps)"
               f"{data}\n")
    upsert_manifest(out, "tiny_gpt", entry, row, section)


def upsert_manifest(out: Path, name: str, entry: dict[str, object], row: str, section: str) -> None:
    """Add (or replace) model ``name``'s entry in ``manifest.json`` and its row and section in ``MANIFEST.md``.

    Shared with ``tools/train_tiny_sbert.py``: the other entries, rows and sections are kept; the row goes after
    the table's last row, the section before "## Reproducibility".
    """
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"models": {}}
    manifest["models"][name] = entry
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    md_path = out / "MANIFEST.md"
    if not md_path.is_file():
        return
    lines = [ln for ln in md_path.read_text().split("\n") if not ln.startswith(f"| `{name}.onnx`")]
    text = "\n".join(lines)
    start = text.find(f"## {name}\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + text[end + 1:]
    last_row = max(i for i, ln in enumerate(text.split("\n")) if ln.startswith("| `"))
    lines = text.split("\n")
    lines.insert(last_row + 1, row)
    text = "\n".join(lines)
    repro = text.find("## Reproducibility")
    text = text[:repro] + section + "\n" + text[repro:] if repro >= 0 else text + "\n" + section
    md_path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "models", help="folder for the legacy export and data")
    ap.add_argument("--dynamo-out", type=Path, default=Path.home() / ".cache" / "onnxprune" / "tiny_gpt",
                    help="folder for the dynamo export")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--max-minutes", type=float, default=10.0,
                    help="time budget: the learning-rate decay ends and training stops by then")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1; on the busy shared machine the shipped model came from, 2 "
                         "threads under nice made 34 steps in 10 minutes, 1 thread without nice 451)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tie", action="store_true", help="tie the LM head to the token embedding")
    ap.add_argument("--d-model", type=int, default=GPTConfig.d_model)
    ap.add_argument("--layers", type=int, default=GPTConfig.n_layers)
    ap.add_argument("--heads", type=int, default=GPTConfig.n_heads)
    ap.add_argument("--context", type=int, default=GPTConfig.context)
    ap.add_argument("--calib-windows", type=int, default=128)
    ap.add_argument("--heldout-windows", type=int, default=256)
    ap.add_argument("--manifest-only", action="store_true",
                    help="only rewrite this model's manifest entry from the files in --out (no training)")
    args = ap.parse_args(argv)
    if args.manifest_only:
        write_manifest(args.out)
        return 0

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cfg = GPTConfig(d_model=args.d_model, n_heads=args.heads, n_layers=args.layers, d_mlp=4 * args.d_model,
                    context=args.context, tie=args.tie)
    splits = load_splits()
    calib = windows(splits["calib"], cfg.context, args.calib_windows)
    heldout = windows(splits["heldout"], cfg.context, args.heldout_windows)
    print(f"bytes: train {len(splits['train']):,}  calib {len(splits['calib']):,}  "
          f"heldout {len(splits['heldout']):,}", flush=True)
    model = TinyGPT(cfg)
    params = sum(p.numel() for p in model.parameters())
    print(f"model {asdict(cfg)}: {params:,} parameters", flush=True)
    steps, seconds, losses = train(model, splits["train"], args)
    model.eval()
    ppl = model_perplexity(model, heldout)
    uni = unigram_perplexity(splits["train"], heldout)
    print(f"held-out perplexity: model {ppl:.3f}, unigram {uni:.3f} ({steps} steps, {seconds:.0f}s)", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    args.dynamo_out.mkdir(parents=True, exist_ok=True)
    legacy, dynamo = args.out / "tiny_gpt.onnx", args.dynamo_out / "tiny_gpt_dynamo.onnx"
    export_legacy(model, legacy)
    export_dynamo(model, dynamo)
    diffs = {str(p): check_export(model, p, heldout) for p in (legacy, dynamo)}
    print(f"ORT vs torch max|diff|: {diffs}", flush=True)
    save_npz(args.out / "tiny_gpt_calib.npz", calib)
    save_npz(args.out / "tiny_gpt_heldout.npz", heldout)
    record = {"config": asdict(cfg), "parameters": params, "steps": steps, "train_seconds": round(seconds, 1),
              "threads": args.threads, "batch": args.batch, "lr": args.lr, "seed": args.seed,
              "final_train_loss": float(np.mean(losses[-100:])), "heldout_perplexity": ppl,
              "heldout_unigram_perplexity": uni, "bytes": {k: len(v) for k, v in splits.items()},
              "calib_shape": list(calib.shape), "heldout_shape": list(heldout.shape),
              "python": ".".join(map(str, sys.version_info[:3])), "torch": torch.__version__,
              "export_max_abs_diff": {Path(k).name: v for k, v in diffs.items()}}
    (args.out / "tiny_gpt.json").write_text(json.dumps(record, indent=2) + "\n")
    write_manifest(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
