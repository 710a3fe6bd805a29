"""Generated tokens per second of illada_rt's engine beside the plain-PyTorch reference path, on the
same weights and settings, with the fraction of the hardware limits measured in the same run.

    python bench/bench_generate.py                                   # small synthetic model, CPU
    python bench/bench_generate.py --device cuda --dtype bfloat16 --synthetic illada-8b,llada-8b --matrix
    python bench/bench_generate.py --device cuda --dtype bfloat16 --model DIR --batch 1,8 --prompt-len 256 --gen-length 256

One row per (model, lengths, batch, schedule, mode, path); see bench/README.md for every field.
Writes bench/results/<device>_<date>.json (or --out DIR / FILE.json) and prints a markdown table last.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling modules, also under runpy

import torch  # noqa: E402

from illada_rt import reference  # noqa: E402
from illada_rt.device import resolve_device  # noqa: E402
from illada_rt.engine import DTYPES  # noqa: E402

import measure  # noqa: E402
import results  # noqa: E402
import roofline  # noqa: E402
import synthetic  # noqa: E402
from device_info import device_info, nvml_snapshot  # noqa: E402

MATRIX = dict(prompt_len="256,512", gen_length="256,512", batch="1,8,32", schedules="steps,threshold",
              modes="exact,prefix,dual")
COLUMNS = [("model", "model", ""), ("P+G", "lengths", ""), ("batch", "batch", ""), ("schedule", "schedule", ""),
           ("mode", "mode", ""), ("path", "path", ""), ("status", "status", ""), ("ms/step", "ms_per_step", ".2f"),
           ("tokens/s", "tokens_per_s", ".1f"), ("x ref", "speedup", ".2f"), ("TFLOP/s", "tflop_per_s", ".3g"),
           ("% peak FLOP", "pct_flops", ".1f"), ("GB/s", "gb_per_s", ".3g"), ("% peak BW", "pct_bytes", ".1f"),
           ("peak GiB", "peak_memory_gib", ".1f"), ("timing", "timing", "")]


def ints(text: str):
    return [int(x) for x in str(text).split(",") if x]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint directory (default: synthetic models, see --synthetic)")
    ap.add_argument("--synthetic", default="small", help=f"comma list of {sorted(synthetic.SYNTHETIC)}")
    ap.add_argument("--n-layers", type=int, default=0, help="shrink the synthetic models to this many layers")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--prompt-len", default="64", help="comma list, paired with --gen-length (one value repeats)")
    ap.add_argument("--gen-length", default="64", help="comma list of answer lengths")
    ap.add_argument("--batch", default="1", help="comma list of batch sizes")
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=0, help="denoising steps (default: gen length, one token a step)")
    ap.add_argument("--schedules", default="steps", help="comma list: steps (top-k schedule), threshold")
    ap.add_argument("--threshold", type=float, default=0.9, help="the threshold schedule's confidence threshold")
    ap.add_argument("--modes", default="exact", help="comma list of engine modes: exact, prefix, dual (KV caches)")
    ap.add_argument("--paths", default="engine,reference", help="comma list: engine, reference")
    ap.add_argument("--matrix", action="store_true", help="the full matrix: " + ", ".join(f"{k} {v}" for k, v in
                                                                                       MATRIX.items()))
    ap.add_argument("--repeats", type=int, default=3, help="timed whole generations (after a short warm-up)")
    ap.add_argument("--max-steps", type=int, default=0,
                    help="engine, exact mode, steps schedule: time this many steps instead of whole runs (0: whole)")
    ap.add_argument("--ref-max-steps", type=int, default=-1,
                    help="the same for the reference path (default: 3 on CUDA, whole runs on the CPU)")
    ap.add_argument("--warmup-steps", type=int, default=1, help="untimed forwards before step timing")
    ap.add_argument("--time-budget", type=float, default=0, help="seconds; later configurations are skipped")
    ap.add_argument("--matmul-size", type=int, default=0, help="peak-FLOP matmul size (default 8192 CUDA, 1024 CPU)")
    ap.add_argument("--copy-mib", type=int, default=0, help="bandwidth copy size (default 2048 CUDA, 256 CPU)")
    ap.add_argument("--out", help="results folder or .json file (default bench/results/)")
    ap.add_argument("--suffix", default="", help="appended to the result file name")
    args = ap.parse_args(argv)
    if args.matrix:
        for key, value in MATRIX.items():
            setattr(args, key, value)
    prompts, gens = ints(args.prompt_len), ints(args.gen_length)
    if len(prompts) == 1 or len(gens) == 1:
        prompts, gens = prompts * max(1, len(gens) // len(prompts)), gens * max(1, len(prompts) // len(gens))
    if len(prompts) != len(gens):
        ap.error("--prompt-len and --gen-length need the same number of values (or one of them a single value)")
    args.lengths = list(zip(prompts, gens))
    return args


def run_engine(eng, ids, kw, mode, clock=None):
    """One generation (or part of one, with a StepClock); returns its forward count."""
    real = eng.model
    if clock is not None:
        eng.model = measure.ClockedModel(real, clock)
    try:
        return eng.generate(ids, seed=0, cache=None if mode == "exact" else mode, **kw).nfe
    finally:
        eng.model = real


def run_reference(ref, ids, kw, clock=None):
    """reference.generate on the weights' device (tensors it creates land there too)."""
    model = ref if clock is None else (lambda x, m: (clock.tick(), ref(x, m))[1])
    with torch.device(ids.device):
        return reference.generate(model, ids, mask_id=ref.cfg.mask_token_id, seed=0, **kw)[1]


def time_config(run, device, limited: int, args, deadline) -> dict:
    """Time run(clock) -> nfe: `limited` steps after warm-up when limited > 0, else --repeats whole runs
    after a two-forward warm-up. Returns ms_per_step, nfe and how it was timed."""
    if limited > 0:
        clock = measure.StepClock(device, args.warmup_steps, limited, deadline)
        try:
            run(clock)
        except measure.StepLimit as stop:
            if str(stop) == "time budget":
                raise
        secs = clock.step_seconds()
        if len(secs) < limited:  # the generation ended first: fewer steps than asked
            raise RuntimeError(f"only {len(secs)} steps to time (fewer than --max-steps {limited})")
        return dict(ms_per_step=1e3 * measure.median(secs), timing=f"median of {len(secs)} steps")
    try:
        run(measure.StepClock(device, 0, 1, deadline))  # warm-up: two forwards
    except measure.StepLimit as stop:
        if str(stop) == "time budget":
            raise
    secs, nfe = [], 0
    for _ in range(args.repeats):
        if time.monotonic() > deadline:
            raise measure.StepLimit("time budget")
        start = measure.Stamp(device)
        nfe = run(None)
        secs.append(start.seconds_to(measure.Stamp(device)))
    seconds = measure.median(secs)
    return dict(seconds_per_generation=seconds, nfe=nfe, ms_per_step=1e3 * seconds / nfe,
                timing=f"median of {len(secs)} runs")


def measure_row(row, eng, ref, ids, args, limits, deadline) -> dict:
    device, cfg = eng.device, eng.cfg
    B, P, G, b = row["batch"], row["prompt_len"], row["gen_length"], row["block_length"]
    kw = dict(gen_length=G, block_length=b, steps=row["steps"], threshold=row["threshold"])
    topk_exact = row["schedule"] == "steps" and row["mode"] == "exact"
    if row["path"] == "engine":
        limited = args.max_steps if topk_exact else 0
        timed = time_config(lambda clock: run_engine(eng, ids, kw, row["mode"], clock), device, limited, args,
                            deadline)
    else:
        limited = (3 if measure.is_cuda(device) else 0) if args.ref_max_steps < 0 else args.ref_max_steps
        timed = time_config(lambda clock: run_reference(ref, ids, kw, clock), device, limited if topk_exact else 0,
                            args, deadline)
    row.update(timed)
    nfe = row.setdefault("nfe", row["steps"])  # step timing: the top-k schedule takes exactly `steps` forwards
    ms = row["ms_per_step"]
    row["tokens_per_s"] = B * G / (nfe * ms / 1e3)
    cost = roofline.step_cost(cfg, B, P, G, b, "reference" if row["path"] == "reference" else row["mode"],
                              nfe / (G // b), eng.model.dtype.itemsize)
    row.update(measure.roofline_row(cost, ms / 1e3, limits))
    row["pct_flops"], row["pct_bytes"] = 100 * row["roofline_flops"], 100 * row["roofline_bytes"]
    return row


def run_model(model_name, args, device, limits, deadline, out_rows, save):
    dtype = DTYPES[args.dtype]
    try:
        eng, ref, label = synthetic.build(args.model, model_name, args.n_layers, dtype, device)
    except torch.cuda.OutOfMemoryError:
        out_rows.append(dict(model=model_name, status="oom (weights)"))
        return
    cfg = eng.cfg
    weights_gib = torch.cuda.memory_allocated(device) / 2 ** 30 if measure.is_cuda(device) else None
    paths = [p for p in args.paths.split(",") if p]
    for schedule in args.schedules.split(","):
        for P, G in args.lengths:
            for B in ints(args.batch):
                ids = torch.randint(0, cfg.vocab_size, (B, P), generator=torch.Generator().manual_seed(B))
                ids = torch.where(ids == cfg.mask_token_id, (ids + 1) % cfg.vocab_size, ids).to(device)
                for mode in args.modes.split(","):
                    for path in paths:
                        if path == "reference" and mode != "exact":
                            continue  # the baseline is the reference's exact (full-sequence) generation
                        row = dict(model=label, parameters=cfg.num_parameters, weights_gib=weights_gib,
                                   lengths=f"{P}+{G}", prompt_len=P, gen_length=G, block_length=args.block_length,
                                   batch=B, steps=args.steps or G, schedule=schedule, mode=mode, path=path,
                                   threshold=args.threshold if schedule == "threshold" else None, status="ok")
                        out_rows.append(row)
                        if measure.is_cuda(device):
                            torch.cuda.synchronize(device)
                            torch.cuda.reset_peak_memory_stats(device)
                        try:
                            measure_row(row, eng, ref, ids, args, limits, deadline)
                        except measure.StepLimit:
                            row["status"] = "skipped (time budget)"
                        except torch.cuda.OutOfMemoryError:
                            row["status"] = "oom"
                        except (RuntimeError, ValueError) as e:
                            row["status"] = "error: " + str(e).splitlines()[0][:200]
                        if measure.is_cuda(device):
                            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
                            row["gpu_now"] = nvml_snapshot(device.index or 0)
                            gc.collect()
                            torch.cuda.empty_cache()
                        print(f"[{time.strftime('%H:%M:%S')}] {label} P+G {P}+{G} batch {B} {schedule} {mode} "
                              f"{path}: {row['status']}, {results.fmt(row.get('ms_per_step'))} ms/step", flush=True)
                        save()
    del eng, ref
    gc.collect()
    if measure.is_cuda(device):
        torch.cuda.empty_cache()


def add_speedups(rows):
    """speedup = engine tokens/s over the reference's on the same model, lengths, batch and schedule."""
    key = lambda r: (r.get("model"), r.get("lengths"), r.get("batch"), r.get("schedule"))  # noqa: E731
    base = {key(r): r["tokens_per_s"] for r in rows if r.get("path") == "reference" and "tokens_per_s" in r}
    for r in rows:
        if r.get("path") == "engine" and "tokens_per_s" in r and key(r) in base:
            r["speedup"] = r["tokens_per_s"] / base[key(r)]


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    started = time.monotonic()
    deadline = started + args.time_budget if args.time_budget > 0 else float("inf")
    info = device_info(device)
    limits = measure.hardware_limits(device, args.matmul_size, args.copy_mib)
    print(f"limits: {limits['matmul']['tflop_per_s']:.2f} TFLOP/s ({limits['matmul']['dtype']} matmul "
          f"{limits['matmul']['size']}^3), {limits['copy']['gb_per_s']:.1f} GB/s (copy of "
          f"{limits['copy']['mib']} MiB)", flush=True)
    path = results.result_path(args.out, info, args.suffix)
    rows = []
    settings = {k: v for k, v in vars(args).items() if k != "lengths"}
    result = dict(kind="bench_generate", **info, dtype=args.dtype, settings=settings, limits=limits, rows=rows)
    save = lambda: results.write_json(path, result)  # noqa: E731
    for name in ([None] if args.model else args.synthetic.split(",")):
        run_model(name, args, device, limits, deadline, rows, save)
    add_speedups(rows)
    result["seconds"] = time.monotonic() - started
    save()
    where = info.get("gpu") or f"{info['cpu']}, {info['torch_threads']} threads"
    print(f"\nresults: {path}")
    for r in rows:
        if "speedup" in r:
            print(f"speed-up over the reference path: {r['speedup']:.2f}x ({r['model']}, P+G {r['lengths']}, "
                  f"batch {r['batch']}, {r['schedule']}, {r['mode']})")
    print(f"\n{where}, {args.dtype}, block {args.block_length}, {info['date']}\n")
    print(results.markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
