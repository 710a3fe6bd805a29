"""Generated tokens per second: illada_rt's engine, and on the CPU the plain-PyTorch reference path.

    python bench/bench_generate.py                       # small synthetic model, CPU
    python bench/bench_generate.py --model DIR --dtype bfloat16 --prompt-len 256 --gen-length 256
    python bench/bench_generate.py --device cuda --dtype bfloat16 --synthetic llada-8b   # GPU

CPU: both paths run the same weights and settings in one process, timed with a wall clock
(median of --repeats after one warm-up run); prints one line per path and the ratio.
CUDA: the engine alone (the reference generator is CPU-only), timed with CUDA events after a
warm-up run, median of --repeats; also the peak GPU memory (torch.cuda.max_memory_allocated)
and the achieved dense TFLOP/s of the forwards. tokens/s counts generated tokens only.
Writes JSON (device, versions, date, one row per path) with --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import torch

from illada_rt import Engine, ModelConfig, build_info, reference
from illada_rt.device import resolve_device
from illada_rt.loader import PREFIX, expected_shapes, load_state_dict
from illada_rt.model import LLaDAModel

SYNTHETIC = {
    "small": dict(model_type="llada", d_model=256, n_heads=4, n_kv_heads=2, n_layers=4, mlp_hidden_size=704,
                  vocab_size=4096, embedding_size=4096, rope_theta=10000.0, rms_norm_eps=1e-5, weight_tying=True,
                  mask_token_id=3, eos_token_id=1, pad_token_id=0, max_sequence_length=2048),
    # the shape of LLaDA-8B (random weights): 32 layers, d 4096, 32 heads of 128, FFN 12288, vocab 126464
    "llada-8b": dict(model_type="llada", d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288,
                     vocab_size=126464, embedding_size=126464, rope_theta=500000.0, rms_norm_eps=1e-5,
                     weight_tying=False, mask_token_id=126336, eos_token_id=126081, pad_token_id=126081,
                     max_sequence_length=4096),
}


def synthetic_weights(cfg: ModelConfig, dtype, device=torch.device("cpu")) -> dict:
    """Random weights for cfg, drawn on `device` (norms ~1, linears ~1/sqrt(fan_in))."""
    g = torch.Generator(device=device).manual_seed(0)
    out = {}
    for name, shape in expected_shapes(cfg).items():
        scale = 1.0 if len(shape) == 1 else shape[-1] ** -0.5
        t = torch.randn(shape, generator=g, device=device) * (0.1 if len(shape) == 1 else scale)
        out[name] = (t + 1.0 if len(shape) == 1 else t).to(dtype)
    out[PREFIX + "wte.weight"] *= 4.0
    return out


def step_flops(cfg: ModelConfig, batch: int, length: int, block: int) -> float:
    """Dense FLOPs of one exact-mode forward over a [batch, length] canvas whose last layer
    (attention queries, FFN) and LM head run on the block's rows only."""
    d, f, kv = cfg.d_model, cfg.mlp_hidden_size, cfg.n_kv_heads * cfg.head_dim
    proj = 2 * d * (d + 2 * kv)          # q, k, v per row
    rest = 2 * d * d + 2 * 3 * d * f     # attention output and the SwiGLU FFN per row
    attn = 4 * length * d                # QK^T and PV per query row
    full = cfg.n_layers * length * (proj + rest + attn)
    last_saved = length - block           # the last layer skips these rows' queries, output and FFN
    return batch * (full - last_saved * (rest + attn) + block * 2 * d * cfg.embedding_size)


def time_runs(fn, repeats: int, device: torch.device):
    """(median seconds, forwards) of fn() over `repeats` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            nfe = fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            nfe = fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times), nfe


def device_info(device: torch.device) -> dict:
    if device.type != "cuda":
        return dict(device="cpu", cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    props = torch.cuda.get_device_properties(device)
    return dict(device="cuda", gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                cuda_capability=f"{props.major}.{props.minor}", torch_cuda=torch.version.cuda,
                extension=build_info())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint directory (default: a synthetic model, see --synthetic)")
    ap.add_argument("--synthetic", default="small", choices=sorted(SYNTHETIC), help="synthetic model shape")
    ap.add_argument("--n-layers", type=int, default=None, help="override the synthetic model's layer count")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="default: gen_length (one token per step)")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--cache", default=None, choices=["prefix", "dual"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-cuda-graphs", action="store_true", help="CUDA: run the steps eagerly (no graph replay)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    device = resolve_device(args.device)
    steps = args.steps or args.gen_length

    state = None
    if args.model:
        eng = Engine.from_pretrained(args.model, device=str(device), dtype=args.dtype,
                                     use_cuda_graphs=not args.no_cuda_graphs)
        if device.type == "cpu":
            state = load_state_dict(args.model, eng.cfg, dtype)
    else:
        raw = dict(SYNTHETIC[args.synthetic])
        if args.n_layers:
            raw["n_layers"] = args.n_layers
        cfg = ModelConfig.from_dict(raw)
        weights = synthetic_weights(cfg, dtype, device)
        eng = Engine(LLaDAModel.from_weights(cfg, weights.items()), use_cuda_graphs=not args.no_cuda_graphs)
        state = weights if device.type == "cpu" else None
        del weights
    cfg = eng.cfg
    ids = torch.randint(0, cfg.mask_token_id, (args.batch, args.prompt_len))
    kw = dict(gen_length=args.gen_length, block_length=args.block_length, steps=steps, threshold=args.threshold)

    graphs = eng._graphs is not None and args.cache is None  # generate() replays CUDA graphs
    name = "illada_rt (graphs)" if graphs else "illada_rt"
    paths = [(name, lambda: eng.generate(ids, seed=0, cache=args.cache, **kw).nfe)]
    if state is not None and args.cache is None:  # the reference generator runs on the CPU only
        ref = reference.ReferenceModel(cfg, state)
        paths.append(("reference", lambda: reference.generate(ref, ids, mask_id=cfg.mask_token_id, seed=0, **kw)[1]))
    flops = step_flops(cfg, args.batch, args.prompt_len + args.gen_length, args.block_length)
    rows = []
    for path, fn in paths:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        seconds, nfe = time_runs(fn, args.repeats, device)
        row = dict(path=path, seconds=seconds, nfe=nfe, ms_per_step=1e3 * seconds / nfe,
                   tokens_per_s=args.batch * args.gen_length / seconds)
        if args.cache is None:
            row["tflop_per_s"] = flops * nfe / seconds / 1e12
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        rows.append(row)
    result = dict(date=datetime.date.today().isoformat(), **device_info(device), torch=torch.__version__,
                  dtype=args.dtype, model=args.model or f"synthetic {args.synthetic}", n_layers=cfg.n_layers,
                  parameters=cfg.num_parameters, batch=args.batch, prompt_len=args.prompt_len, cache=args.cache,
                  **kw, rows=rows)
    print("| path | device | ms/step | tokens/s | steps | TFLOP/s | peak GiB |\n|---|---|---|---|---|---|---|")
    for r in rows:
        tflops, peak = (f"{r[k]:.2f}" if k in r else "-" for k in ("tflop_per_s", "peak_memory_gib"))
        print(f"| {r['path']} | {device} | {r['ms_per_step']:.2f} | {r['tokens_per_s']:.1f} | {r['nfe']} | "
              f"{tflops} | {peak} |")
    where = (f"{result['threads']} threads" if device.type == "cpu" else result["gpu"])
    setting = (f"batch {args.batch}, prompt {args.prompt_len}, answer {args.gen_length}, block {args.block_length}, "
               f"{args.dtype}, {cfg.num_parameters / 1e6:.1f}M parameters, {where}")
    if len(rows) == 2:
        result["speedup"] = rows[1]["seconds"] / rows[0]["seconds"]
        print(f"speed-up over the reference path: {result['speedup']:.2f}x ({setting})")
    else:
        print(f"({setting})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
