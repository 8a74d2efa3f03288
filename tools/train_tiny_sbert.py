"""Train a tiny post-norm BERT-style sentence encoder on the Python standard library, export it to ONNX.

Why this script exists: the residual stream of a post-norm model (LayerNorm after each residual add, as the
original BERT) cannot be rotated, so onnxprune cuts it by plain channel pruning and a least-squares re-fit,
which is not exact; how much a sentence embedding moves is the number that judges it, and it needs a
sentence encoder that is small, trained on real text, reproducible offline and free of any download.

Text and split: exactly those of ``tools/train_tiny_gpt.py`` (its ``stdlib_files``/``split_of``/``load_splits``
are imported, not copied): the stdlib's ``.py`` files as bytes, split by file into 90 % train, 5 % calibration,
5 % held-out. A *sentence* is a line of prose from those files: a comment's text (after ``#``) or a whole
stripped line (docstring lines), kept when it is ``--min-len``..``--context`` bytes long and at least 75 % of
its bytes are letters or spaces, de-duplicated in file order. The vocabulary is the 256 byte values plus
``PAD`` (256) and ``MASK`` (257).

Model: token + learned position embeddings → LayerNorm (BERT's embedding norm) → post-norm blocks
(``x = LN(x + attn(x))``, ``x = LN(x + MLP(x))``, GELU, bidirectional attention with the padding masked out)
→ the sentence embedding, the attention-mask-weighted mean of the last hidden states. Defaults: d_model 96,
4 heads, 3 layers, MLP 384, context 64: about 0.37 M parameters, a 1.5 MB ONNX file.

Training: masked-byte modelling (``--mask-rate``, default 30 % of the real bytes: 80 % → MASK, 10 % → a
random byte, 10 % kept) on two independently masked, dropout-noised views of each sentence, plus a
SimCSE-style contrastive term between the two views' pooled embeddings (in-batch negatives, temperature
0.05). AdamW, warm-up then cosine decay that follows ``--max-minutes`` when the steps do not fit in it (as
``train_tiny_gpt.py``).

Outputs:
    models/tiny_sbert.onnx          legacy exporter (``torch.onnx.export(dynamo=False)``), opset 17: inputs
                                    ``input_ids``/``attention_mask`` int64 [batch, sequence], output
                                    ``embedding`` float32 [batch, d_model]
    models/tiny_sbert_calib.npz     ``input_ids``, ``attention_mask`` int64 [N, T]: calibration sentences
    models/tiny_sbert_heldout.npz   the same for held-out sentences (PAD after each sentence, mask 0 there)
    models/tiny_sbert.json          training record: sizes, steps, time, held-out MLM loss/accuracy
    models/manifest.json, MANIFEST.md   this model's entry (the other entries are kept)

Run it with a venv that has torch (never a dependency of onnxprune)::

    nice /work/venv-torch/bin/python tools/train_tiny_sbert.py                    # 10 min at most, 1 thread
    /work/venv-torch/bin/python tools/train_tiny_sbert.py --steps 20 --out /tmp/s   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny_gpt import _sha256, load_splits, upsert_manifest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAD, MASK, VOCAB = 256, 257, 258


@dataclass(frozen=True)
class SbertConfig:
    """Shape of the model; the defaults give a ~1.5 MB ONNX file."""

    d_model: int = 96
    n_heads: int = 4
    n_layers: int = 3
    d_mlp: int = 384
    context: int = 64
    dropout: float = 0.1


class PostNormBlock(nn.Module):
    """One post-norm encoder block: x = LN(x + attn(x)), then x = LN(x + mlp(x)) (the original BERT's order)."""

    def __init__(self, cfg: SbertConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.scale = 1.0 / math.sqrt(cfg.d_model // cfg.n_heads)
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.k = nn.Linear(cfg.d_model, cfg.d_model)
        self.v = nn.Linear(cfg.d_model, cfg.d_model)
        self.o = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.up = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.down = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def attention(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, e = x.shape
        h = self.n_heads
        q = self.q(x).view(b, t, h, e // h).transpose(1, 2)
        k = self.k(x).view(b, t, h, e // h).transpose(1, 2)
        v = self.v(x).view(b, t, h, e // h).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * self.scale + bias
        y = self.drop(torch.softmax(scores, dim=-1)) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, e))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.drop(self.attention(x, bias)))
        return self.ln2(x + self.drop(self.down(F.gelu(self.up(x)))))


class TinySbert(nn.Module):
    """Byte-level post-norm encoder; ``forward`` gives the last hidden states, ``embed`` the pooled sentence."""

    def __init__(self, cfg: SbertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(VOCAB, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.ln_emb = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(PostNormBlock(cfg) for _ in range(cfg.n_layers))
        self.mlm = nn.Linear(cfg.d_model, 256)  # training only: predicts the byte under a mask
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.drop(self.ln_emb(self.tok(input_ids) + self.pos(torch.arange(t, device=input_ids.device))))
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0  # padded keys get no weight
        for blk in self.blocks:
            x = blk(x, bias)
        return x

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return mean_pool(self(input_ids, attention_mask), attention_mask)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over the real (mask 1) positions."""
    m = attention_mask[:, :, None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class SentenceEncoder(nn.Module):
    """What is exported: ``(input_ids, attention_mask) -> embedding``."""

    def __init__(self, model: TinySbert) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.embed(input_ids, attention_mask)


def is_prose(line: bytes, min_len: int, max_len: int) -> bool:
    """A line of text rather than code: the right length, at least 75 % letters or spaces."""
    if not min_len <= len(line) <= max_len:
        return False
    letters = sum(1 for b in line if 65 <= b <= 90 or 97 <= b <= 122 or b == 32)
    return letters >= 0.75 * len(line)


def sentences(stream: np.ndarray, min_len: int, max_len: int) -> list[bytes]:
    """Comment texts and stripped lines of a split that read as prose, de-duplicated, in file order."""
    seen: set[bytes] = set()
    out = []
    for raw in stream.tobytes().split(b"\n"):
        line = raw.strip()
        if line.startswith(b"#"):
            line = line.lstrip(b"#").strip()
        if line not in seen and is_prose(line, min_len, max_len):
            seen.add(line)
            out.append(line)
    return out


def pick(items: list[bytes], count: int) -> list[bytes]:
    """``count`` items evenly spread over the list (all of them when there are fewer)."""
    if len(items) <= count:
        return items
    idx = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in idx]


def encode(batch: list[bytes], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` (PAD after each sentence) and ``attention_mask``, int64 [N, length or the longest]."""
    t = length or max(len(s) for s in batch)
    ids = np.full((len(batch), t), PAD, dtype=np.int64)
    mask = np.zeros((len(batch), t), dtype=np.int64)
    for i, s in enumerate(batch):
        ids[i, :len(s)] = np.frombuffer(s, dtype=np.uint8)
        mask[i, :len(s)] = 1
    return ids, mask


def mask_bytes(ids: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, rate: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of real bytes: the corrupted ids and the targets (-100 where nothing is predicted)."""
    chosen = (torch.rand(ids.shape, generator=gen) < rate) & mask.bool()
    targets = torch.where(chosen, ids, torch.full_like(ids, -100))
    r = torch.rand(ids.shape, generator=gen)
    out = torch.where(chosen & (r < 0.8), torch.full_like(ids, MASK), ids)
    randoms = torch.randint(0, 256, ids.shape, generator=gen)
    out = torch.where(chosen & (r >= 0.8) & (r < 0.9), randoms, out)
    return out, targets


def mlm_loss(model: TinySbert, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Cross-entropy of the masked bytes; also the number predicted right and the number predicted."""
    sel = targets != -100
    logits = model.mlm(hidden[sel])
    want = targets[sel]
    return F.cross_entropy(logits, want), int((logits.argmax(-1) == want).sum()), int(want.numel())


def train(model: TinySbert, train_sents: list[bytes], args: argparse.Namespace) -> tuple[int, float, list[dict]]:
    """Two masked, dropout-noised views per sentence: MLM on both, plus SimCSE between their pooled vectors."""
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    start = time.perf_counter()
    log: list[dict] = []
    budget = args.max_minutes * 60
    step = 0
    model.train()
    for step in range(1, args.steps + 1):
        progress = min(1.0, max(step / args.steps, (time.perf_counter() - start) / budget))
        lr = args.lr * min(step / args.warmup, 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = [train_sents[i] for i in rng.integers(0, len(train_sents), size=args.batch)]
        ids_np, mask_np = encode(batch)
        ids, mask = torch.from_numpy(ids_np), torch.from_numpy(mask_np)
        views = [mask_bytes(ids, mask, gen, args.mask_rate) for _ in range(2)]
        both = torch.cat([v[0] for v in views])
        hidden = model(both, torch.cat([mask, mask]))
        mlm, right, count = mlm_loss(model, hidden, torch.cat([v[1] for v in views]))
        pooled = F.normalize(mean_pool(hidden, torch.cat([mask, mask])), dim=-1)
        a, b = pooled[:len(batch)], pooled[len(batch):]
        sim = a @ b.T / args.temperature
        cl = F.cross_entropy(sim, torch.arange(len(batch)))
        loss = mlm + args.contrastive * cl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log.append({"mlm": mlm.item(), "acc": right / max(count, 1), "cl": cl.item()})
        elapsed = time.perf_counter() - start
        if step % 50 == 0:
            recent = log[-50:]
            print(f"step {step}/{args.steps}  mlm {np.mean([r['mlm'] for r in recent]):.3f}  "
                  f"acc {np.mean([r['acc'] for r in recent]):.3f}  cl {np.mean([r['cl'] for r in recent]):.3f}  "
                  f"lr {lr:.2e}  {elapsed:.0f}s", flush=True)
        if elapsed >= budget:
            print(f"stopping at step {step}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    model.eval()
    return step, time.perf_counter() - start, log


@torch.no_grad()
def evaluate(model: TinySbert, ids: np.ndarray, mask: np.ndarray, train_sents: list[bytes], args: argparse.Namespace
             ) -> dict[str, float]:
    """Held-out MLM loss/accuracy (one fixed masking), the same for the training bytes' unigram frequencies
    (what a model that ignores the context reaches), and the embeddings' mean pairwise cosine (anisotropy)."""
    model.eval()
    gen = torch.Generator().manual_seed(args.seed + 1)
    x, m = torch.from_numpy(ids), torch.from_numpy(mask)
    corrupted, targets = mask_bytes(x, m, gen, args.mask_rate)
    loss, right, count = mlm_loss(model, model(corrupted, m), targets)
    counts = np.bincount(np.frombuffer(b"".join(train_sents), dtype=np.uint8), minlength=256) + 1.0
    logp = np.log(counts / counts.sum())
    want = targets[targets != -100].numpy()
    emb = F.normalize(model.embed(x, m), dim=-1)
    cos = emb @ emb.T
    n = len(emb)
    return {"mlm_loss": float(loss), "mlm_accuracy": right / count, "masked_bytes": count,
            "unigram_loss": float(-logp[want].mean()), "unigram_accuracy": float(np.mean(want == logp.argmax())),
            "mean_pairwise_cosine": float((cos.sum() - n) / (n * (n - 1)))}


def export(model: TinySbert, path: Path) -> None:
    """TorchScript exporter, opset 17, dynamic batch and sequence axes."""
    example = (torch.full((2, 16), 97, dtype=torch.int64), torch.ones(2, 16, dtype=torch.int64))
    # an eval-mode wrapper: the exporter restores the wrapper's mode afterwards, and with it the model's
    torch.onnx.export(SentenceEncoder(model).eval(), example, str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                    "attention_mask": {0: "batch", 1: "sequence"}, "embedding": {0: "batch"}})


def check_export(model: TinySbert, path: Path, ids: np.ndarray, mask: np.ndarray) -> float:
    """Largest |ORT − torch| of the embeddings on two shapes (dynamic axes really dynamic)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    model.eval()
    with torch.no_grad():
        for x, m in ((ids[:3], mask[:3]), (ids[3:8, :37], mask[3:8, :37])):
            got = sess.run(["embedding"], {"input_ids": x, "attention_mask": m})[0]
            want = model.embed(torch.from_numpy(x), torch.from_numpy(m)).numpy()
            worst = max(worst, float(np.abs(got - want).max()))
    return worst


def save_npz(path: Path, ids: np.ndarray, mask: np.ndarray) -> None:
    with path.open("wb") as f:
        np.savez_compressed(f, input_ids=ids, attention_mask=mask)


def write_manifest(out: Path) -> None:
    """This model's entry in ``manifest.json`` and its row and section in ``MANIFEST.md`` (others kept)."""
    import onnx
    import onnxruntime as ort

    from onnxprune.core.stats import model_stats

    record = json.loads((out / "tiny_sbert.json").read_text())
    path = out / "tiny_sbert.onnx"
    model = onnx.load(str(path))
    cfg = record["config"]
    stats = model_stats(model, dims={"batch": 1, "sequence": cfg["context"]})
    held = record["heldout"]
    sample = np.load(out / "tiny_sbert_heldout.npz")
    emb = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["embedding"], {k: sample[k][:3] for k in ("input_ids", "attention_mask")})[0]
    data = {kind: {"file": f"tiny_sbert_{kind}.npz", "sha256": _sha256(out / f"tiny_sbert_{kind}.npz"),
                   "bytes": (out / f"tiny_sbert_{kind}.npz").stat().st_size} for kind in ("calib", "heldout")}
    recipe = (f"byte-level post-norm BERT-style sentence encoder on the Python {record['python']} standard "
              f"library (tools/train_tiny_gpt.py's split by file; sentences are prose lines: comments and "
              f"docstring lines, {record['sentences']['train']} train): d_model {cfg['d_model']}, "
              f"{cfg['n_heads']} heads, {cfg['n_layers']} layers, GELU MLP {cfg['d_mlp']}, context "
              f"{cfg['context']}, learned positions, embedding LayerNorm, LayerNorm after each residual add; "
              f"masked-byte modelling ({record['mask_rate']:.0%} of the bytes) + SimCSE (two masked dropout views, "
              f"weight {record['contrastive']}); AdamW lr "
              f"{record['lr']}, batch {record['batch']}, {record['steps']} steps in {record['train_seconds']} s "
              f"on {record['threads']} thread(s); held-out MLM loss {held['mlm_loss']:.3f}, accuracy "
              f"{held['mlm_accuracy']:.1%} (byte unigram: {held['unigram_loss']:.3f}, "
              f"{held['unigram_accuracy']:.1%}); embedding = attention-mask-weighted mean of the last hidden states")
    entry = {
        "file": path.name, "sha256": _sha256(path), "bytes": path.stat().st_size,
        "source": f"tools/train_tiny_sbert.py (PyTorch {record['torch']}), class TinySbert, "
                  "torch.onnx.export(dynamo=False)",
        "recipe": recipe, "trained": True, "params": stats.params, "macs": stats.macs, "ops": stats.op_histogram,
        "opset": {imp.domain or "ai.onnx": int(imp.version) for imp in model.opset_import},
        "inputs": "`input_ids` int64[batch,sequence], `attention_mask` int64[batch,sequence]",
        "outputs": f"`embedding` float32[batch,{cfg['d_model']}]",
        "ort_vs_source_rel": record["export_max_abs_diff"] / float(np.abs(emb).max()),  # as export_models.py
        "accuracy": None, "source_accuracy": None,
        "mlm": {"heldout_loss": held["mlm_loss"], "heldout_accuracy": held["mlm_accuracy"]}, "data": data,
    }
    row = (f"| `tiny_sbert.onnx` | yes | {entry['params']} | {entry['macs']} | {entry['bytes']} | "
           f"{entry['inputs']} | — (MLM accuracy {held['mlm_accuracy']:.1%}) |")
    lines = "".join(f"\n- {k} data: `{d['file']}`, {d['bytes']} bytes, sha256 `{d['sha256']}`"
                    f" ({record['sentences'][k]} sentences)" for k, d in data.items())
    section = (f"## tiny_sbert\n\n- source: {entry['source']}\n- how: {recipe}\n"
               f"- file: `tiny_sbert.onnx`, {entry['bytes']} bytes, sha256 `{entry['sha256']}`\n"
               f"- params: {entry['params']}; MACs at batch 1, sequence {cfg['context']}: {entry['macs']}\n"
               f"- inputs: {entry['inputs']}; outputs: {entry['outputs']}\n"
               f"- onnxruntime vs torch: max abs diff {record['export_max_abs_diff']:.1e}; held-out embeddings' "
               f"mean pairwise cosine {held['mean_pairwise_cosine']:.3f}\n"
               f"- reproducibility: seeded, but the learning-rate decay follows `--max-minutes` when the steps "
               f"do not fit in it, so a busy machine trains fewer steps (this file: {record['steps']} steps)"
               f"{lines}\n")
    upsert_manifest(out, "tiny_sbert", entry, row, section)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "models")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--max-minutes", type=float, default=10.0,
                    help="time budget: the learning-rate decay ends and training stops by then")
    ap.add_argument("--batch", type=int, default=32, help="sentences per step (two views each)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--mask-rate", type=float, default=0.3,
                    help="share of the real bytes masked (default 0.3: more targets per step than BERT's 0.15, "
                         "which learnt little more than byte frequencies in 10 minutes on the busy machine)")
    ap.add_argument("--contrastive", type=float, default=0.5, help="weight of the SimCSE term (0: MLM only)")
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--d-model", type=int, default=SbertConfig.d_model)
    ap.add_argument("--layers", type=int, default=SbertConfig.n_layers)
    ap.add_argument("--heads", type=int, default=SbertConfig.n_heads)
    ap.add_argument("--context", type=int, default=SbertConfig.context)
    ap.add_argument("--min-len", type=int, default=24, help="shortest sentence kept, in bytes")
    ap.add_argument("--calib-sentences", type=int, default=256)
    ap.add_argument("--heldout-sentences", type=int, default=512)
    ap.add_argument("--manifest-only", action="store_true",
                    help="only rewrite this model's manifest entry from the files in --out (no training)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.manifest_only:
        write_manifest(args.out)
        return 0

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cfg = SbertConfig(d_model=args.d_model, n_heads=args.heads, n_layers=args.layers, d_mlp=4 * args.d_model,
                      context=args.context)
    splits = load_splits()
    sents = {k: sentences(v, args.min_len, cfg.context) for k, v in splits.items()}
    calib_s = pick(sents["calib"], args.calib_sentences)
    held_s = pick(sents["heldout"], args.heldout_sentences)
    print(f"sentences: train {len(sents['train']):,}  calib {len(calib_s)}/{len(sents['calib'])}  "
          f"heldout {len(held_s)}/{len(sents['heldout'])}", flush=True)
    calib, heldout = encode(calib_s, cfg.context), encode(held_s, cfg.context)
    model = TinySbert(cfg)
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mlm."))
    print(f"model {asdict(cfg)}: {params:,} parameters (+ MLM head)", flush=True)
    steps, seconds, log = train(model, sents["train"], args)
    held = evaluate(model, *heldout, sents["train"], args)
    print(f"held-out: {held} ({steps} steps, {seconds:.0f}s)", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "tiny_sbert.onnx"
    export(model, path)
    diff = check_export(model, path, *heldout)
    print(f"ORT vs torch max|diff|: {diff:.2e}", flush=True)
    save_npz(args.out / "tiny_sbert_calib.npz", *calib)
    save_npz(args.out / "tiny_sbert_heldout.npz", *heldout)
    last = log[-50:]
    record = {"config": asdict(cfg), "parameters": params, "steps": steps, "train_seconds": round(seconds, 1),
              "threads": args.threads, "batch": args.batch, "lr": args.lr, "seed": args.seed,
              "contrastive": args.contrastive, "temperature": args.temperature, "mask_rate": args.mask_rate,
              "final_train": {k: float(np.mean([r[k] for r in last])) for k in ("mlm", "acc", "cl")},
              "heldout": held, "sentences": {"train": len(sents["train"]), "calib": len(calib_s),
                                             "heldout": len(held_s)},
              "python": ".".join(map(str, sys.version_info[:3])), "torch": torch.__version__,
              "export_max_abs_diff": diff}
    (args.out / "tiny_sbert.json").write_text(json.dumps(record, indent=2) + "\n")
    write_manifest(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
