"""Generated tokens per second: illada_rt's engine against the plain-PyTorch reference path.

    python bench/bench_generate.py                       # small synthetic model, CPU
    python bench/bench_generate.py --model DIR --dtype bfloat16 --prompt-len 256 --gen-length 256

Both paths run the same weights and settings in one process; tokens/s counts generated
tokens only. Prints one line per path and the ratio, and writes JSON with --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import torch

from illada_rt import Engine, ModelConfig, reference
from illada_rt.loader import PREFIX, expected_shapes, load_state_dict
from illada_rt.model import LLaDAModel

SYNTHETIC = dict(model_type="llada", d_model=256, n_heads=4, n_kv_heads=2, n_layers=4, mlp_hidden_size=704,
                 vocab_size=4096, embedding_size=4096, rope_theta=10000.0, rms_norm_eps=1e-5, weight_tying=True,
                 mask_token_id=3, eos_token_id=1, pad_token_id=0, max_sequence_length=2048)


def synthetic_weights(cfg: ModelConfig, dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, shape in expected_shapes(cfg).items():
        scale = 1.0 if len(shape) == 1 else shape[-1] ** -0.5
        t = torch.randn(shape, generator=g) * (0.1 if len(shape) == 1 else scale)
        out[name] = (t + 1.0 if len(shape) == 1 else t).to(dtype)
    out[PREFIX + "wte.weight"] *= 4.0
    return out


def time_runs(fn, repeats: int):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        nfe = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), nfe


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint directory (default: a small synthetic model)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="default: gen_length (one token per step)")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    steps = args.steps or args.gen_length

    if args.model:
        eng = Engine.from_pretrained(args.model, dtype=args.dtype)
        state = load_state_dict(args.model, eng.cfg, dtype)
    else:
        cfg = ModelConfig.from_dict(SYNTHETIC)
        state = synthetic_weights(cfg, dtype)
        eng = Engine(LLaDAModel.from_weights(cfg, state.items()))
    cfg = eng.cfg
    ref = reference.ReferenceModel(cfg, state)
    ids = torch.randint(0, cfg.mask_token_id, (args.batch, args.prompt_len))
    kw = dict(gen_length=args.gen_length, block_length=args.block_length, steps=steps, threshold=args.threshold)

    rows = []
    for path, fn in (
        ("illada_rt", lambda: eng.generate(ids, seed=0, **kw).nfe),
        ("reference", lambda: reference.generate(ref, ids, mask_id=cfg.mask_token_id, seed=0, **kw)[1]),
    ):
        seconds, nfe = time_runs(fn, args.repeats)
        rows.append(dict(path=path, seconds=seconds, nfe=nfe, ms_per_step=1e3 * seconds / nfe,
                         tokens_per_s=args.batch * args.gen_length / seconds))
    result = dict(date=datetime.date.today().isoformat(), device="cpu", cpu=platform.processor() or platform.machine(),
                  threads=torch.get_num_threads(), torch=torch.__version__, dtype=args.dtype,
                  model=args.model or "synthetic", batch=args.batch, prompt_len=args.prompt_len, **kw, rows=rows,
                  speedup=rows[1]["seconds"] / rows[0]["seconds"])
    print(f"| path | ms/step | tokens/s | steps |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['ms_per_step']:.2f} | {r['tokens_per_s']:.1f} | {r['nfe']} |")
    print(f"speed-up over the reference path: {result['speedup']:.2f}x "
          f"(batch {args.batch}, prompt {args.prompt_len}, answer {args.gen_length}, {args.dtype}, "
          f"{result['threads']} threads)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
