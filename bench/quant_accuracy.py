"""Accuracy cost of weight quantization: each format against the unquantized model.

    python bench/quant_accuracy.py                     # tiny random checkpoints + the bundled demo model
    python bench/quant_accuracy.py --model DIR --dtype bfloat16 --device cuda --out acc.json

Per model and format (int8, int4, fp8; block matrices quantized, embeddings, norms and the LM
head kept; --quantize-head quantizes the head too):
  logit error   max and mean |logits_q - logits| over every position of half-masked inputs
                (the model's inputs during denoising), and mean |error| / mean |logit|
  top-1         how often argmax over the vocabulary agrees, at the masked positions
  gen tokens    how many generated answer tokens agree with the unquantized model's
                (greedy, low-confidence remasking, same seed): quantization changes a token
                and the canvas diverges from there, so this is the strictest measure
  weights       weight bytes in memory (codes, scales, zeros and the dense rest), and tokens/s of
                the same generation (with the plain-torch dequantizing matmul where the build
                has no quantized kernels: a correctness path, not a fast one)
int4 uses the largest group size of 128, 64, 32, 16 dividing every input dim (printed).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

from illada_rt import DEMO_MODEL_DIR, Engine, ModelConfig, build_info
from illada_rt.model import weight_bytes
from illada_rt.quant.spec import QuantSpec, quantized_shapes

FORMATS = ("int8", "int4", "fp8")
# Public-domain lines (Hamlet III.i, Sonnet 18, Julius Caesar III.ii) for the demo model.
TEXTS = [
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
    "The slings and arrows of outrageous fortune, Or to take arms against a sea of troubles",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: "
    "Rough winds do shake the darling buds of May, And summer's lease hath all too short a date",
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him. "
    "The evil that men do lives after them; The good is oft interred with their bones",
]
PROMPTS = ["KING. What say you", "Enter HAMLET.", "O Romeo, Romeo,", "First Citizen."]


def group_size_for(cfg: ModelConfig) -> int:
    ks = [k for _, k in quantized_shapes(cfg, QuantSpec("int8", quantize_head=True)).values()]
    return next(g for g in (128, 64, 32, 16, 8, 2) if all(k % g == 0 for k in ks))


def inputs(eng: Engine, use_text: bool, seed: int = 0):
    """(logit inputs [B, L] with half the positions masked, masked [B, L] bool, generation prompts [B, P])."""
    g = torch.Generator().manual_seed(seed)
    cfg = eng.cfg
    if use_text:
        rows = [eng.codec.encode(t)[:48] for t in TEXTS]
        width = min(len(r) for r in rows)
        ids = torch.tensor([r[:width] for r in rows])
        prompts = torch.cat([eng.encode_prompts([p])[0][:, -4:] for p in PROMPTS])   # [4, 4]
    else:
        ids = torch.randint(0, cfg.vocab_size, (4, 48), generator=g)
        ids[ids == cfg.mask_token_id] = (cfg.mask_token_id + 1) % cfg.vocab_size
        prompts = ids[:, :6].clone()
    masked = torch.rand(ids.shape, generator=g) < 0.5
    return ids.masked_fill(masked, cfg.mask_token_id), masked, prompts


def generate(eng: Engine, prompts, gen_length: int, repeats: int):
    """(answers [B, gen_length], generated tokens/s: median of `repeats` runs after a warm-up run)."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        out = eng.generate(prompts, gen_length=gen_length, block_length=16, steps=gen_length, seed=0)
        if eng.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return out.answers, prompts.shape[0] * gen_length / statistics.median(times[1:])


def measure(name: str, model_dir: str, args, use_text: bool):
    kw = dict(device=args.device, dtype=args.dtype)
    base = Engine.from_pretrained(model_dir, **kw)
    group = args.group_size or group_size_for(base.cfg)
    ids, masked, prompts = inputs(base, use_text)
    want = base.logits(ids)
    want_answers, tps = generate(base, prompts, args.gen_length, args.repeats)
    rows = [dict(model=name, format=args.dtype, group_size=None, max_err=0.0, mean_err=0.0, rel_err=0.0, top1=1.0,
                 gen_agree=1.0, weight_mib=weight_bytes(base.model)["total"] / 2 ** 20, tokens_per_s=tps)]
    for fmt in FORMATS:
        eng = Engine.from_pretrained(model_dir, quantization=fmt, group_size=group,
                                     quantize_head=args.quantize_head, **kw)
        got = eng.logits(ids)
        err = (got - want).abs()
        answers, tps = generate(eng, prompts, args.gen_length, args.repeats)
        rows.append(dict(model=name, format=fmt, group_size=group if fmt == "int4" else None,
                         max_err=float(err.max()), mean_err=float(err.mean()),
                         rel_err=float(err.mean() / want.abs().mean()),
                         top1=float((got.argmax(-1) == want.argmax(-1))[masked].float().mean()),
                         gen_agree=float((answers == want_answers).float().mean()),
                         weight_mib=weight_bytes(eng.model)["total"] / 2 ** 20, tokens_per_s=tps))
    return rows


def table(rows) -> str:
    lines = ["| model | format | max \\|Δlogit\\| | mean \\|Δlogit\\| | mean rel. | top-1 agree | gen. tokens agree "
             "| weights MiB | tokens/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = r["format"] + (f" (g{r['group_size']})" if r["group_size"] else "")
        lines.append(f"| {r['model']} | {fmt} | {r['max_err']:.3f} | {r['mean_err']:.4f} | {r['rel_err']:.2%} | "
                     f"{r['top1']:.1%} | {r['gen_agree']:.1%} | {r['weight_mib']:.2f} | {r['tokens_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", help="checkpoint dir (repeatable; default: tiny + demo)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--group-size", type=int, default=None, help="int4 group (default: largest that fits)")
    ap.add_argument("--quantize-head", action="store_true")
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed generations (median) after a warm-up")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)

    rows = []
    if args.model:
        for m in args.model:
            rows += measure(os.path.basename(os.path.normpath(m)), m, args, use_text=False)
    else:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python_tests"))
        from checkpoints import write_checkpoint
        with tempfile.TemporaryDirectory() as tmp:
            for layout in ("llada", "illada"):
                path = os.path.join(tmp, layout)
                write_checkpoint(path, layout)
                rows += measure(f"tiny {layout} (random)", path, args, use_text=False)
        rows += measure("demo model", DEMO_MODEL_DIR, args, use_text=True)
    print(table(rows))
    if args.out:
        meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(), machine=platform.machine(),
                    processor=platform.processor(), torch=torch.__version__, threads=torch.get_num_threads(),
                    build=build_info(), device=args.device, dtype=args.dtype)
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
