"""Generated tokens per second of illada_rt's engine beside the plain-PyTorch reference path, on the
same weights and settings, with the fraction of the hardware limits measured in the same run.

    python bench/bench_generate.py                                   # small synthetic model, CPU
    python bench/bench_generate.py --device cuda --dtype bfloat16 --synthetic illada-8b,llada-8b --matrix
    python bench/bench_generate.py --device cuda --dtype bfloat16 --model DIR --batch 1,8 --quant none,int8
    python bench/bench_generate.py --device cuda --dtype bfloat16 --synthetic illada-8b --kernels custom,torch

One row per (model, quantization, kernels, lengths, batch, schedule, mode, path); see bench/README.md
for every field.
Writes bench/results/<device>_<date>.json (or --out DIR / FILE.json) and prints a markdown table last.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling modules, also under runpy

import torch  # noqa: E402

from illada_rt import reference  # noqa: E402
from illada_rt.device import resolve_device  # noqa: E402
from illada_rt.engine import DTYPES  # noqa: E402
from illada_rt.model import weight_bytes  # noqa: E402

import measure  # noqa: E402
import results  # noqa: E402
import roofline  # noqa: E402
import synthetic  # noqa: E402
from device_info import device_info, nvml_snapshot  # noqa: E402

MATRIX = dict(prompt_len="256,512", gen_length="256,512", batch="1,8,32", schedules="steps,threshold",
              modes="exact,prefix,dual")


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
    ap.add_argument("--quant", default="none",
                    help="comma list of weight formats: none, int8, int4, fp8 (quantized at load where the "
                         "package supports it; the reference runs on the dense weights only)")
    ap.add_argument("--matrix", action="store_true", help="the full matrix: " + ", ".join(f"{k} {v}" for k, v in
                                                                                       MATRIX.items()))
    ap.add_argument("--repeats", type=int, default=3, help="timed whole generations after one warm-up generation")
    ap.add_argument("--max-steps", type=int, default=0,
                    help="engine, exact mode, steps schedule: run about this many steps (whole blocks, >= 1 a "
                         "block) instead of the schedule's, and scale (0: the full schedule)")
    ap.add_argument("--ref-max-steps", type=int, default=-1,
                    help="the same for the reference (default: 1 step a block on CUDA, the full schedule on CPU)")
    ap.add_argument("--ref-repeats", type=int, default=-1, help="the reference's --repeats (default: 1 on CUDA)")
    ap.add_argument("--kernels", action="append", default=[], metavar="CHOICE[,CHOICE...]",
                    help="build the engine once per choice with kernels=CHOICE: a comma list of custom, torch, "
                         "auto, or one per-family choice such as attention=torch,remask=custom; repeatable "
                         "(default: the engine's own default, no kernels keyword)")
    ap.add_argument("--tensor-parallel", default="1",
                    help="comma list of rank counts: each builds the engine with tensor_parallel=N (N > 1 needs "
                         "N devices on CUDA; a synthetic model is written to a temporary checkpoint first)")
    ap.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra keyword for the Engine (e.g. use_cuda_graphs=0 where the Engine has it); repeatable")
    ap.add_argument("--time-budget", type=float, default=0, help="seconds; later configurations are skipped")
    ap.add_argument("--matmul-size", type=int, default=0, help="peak-FLOP matmul size (default 8192 CUDA, 1024 CPU)")
    ap.add_argument("--copy-mib", type=int, default=0, help="bandwidth copy size (default 2048 CUDA, 256 CPU)")
    ap.add_argument("--out", help="results folder or .json file (default bench/results/)")
    ap.add_argument("--suffix", default="", help="appended to the result file name")
    args = ap.parse_args(argv)
    if args.matrix:
        for key, value in MATRIX.items():
            setattr(args, key, value)
    choices = dict(schedules=("steps", "threshold"), modes=("exact", "prefix", "dual"),
                   paths=("engine", "reference"), quant=("none", "int8", "int4", "fp8"),
                   synthetic=tuple(synthetic.SYNTHETIC))
    for key, allowed in choices.items():
        bad = [x for x in getattr(args, key).split(",") if x not in allowed]
        if bad:
            ap.error(f"--{key}: {', '.join(bad)} not among {', '.join(allowed)}")
    prompts, gens = ints(args.prompt_len), ints(args.gen_length)
    if len(prompts) == 1 or len(gens) == 1:
        prompts, gens = prompts * max(1, len(gens) // len(prompts)), gens * max(1, len(prompts) // len(gens))
    if len(prompts) != len(gens):
        ap.error("--prompt-len and --gen-length need the same number of values (or one of them a single value)")
    args.lengths = list(zip(prompts, gens))
    args.kernel_choices = kernel_choices(args.kernels, ap.error)
    args.engine_kwargs = {}
    for item in args.engine_option:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--engine-option {item!r}: expected KEY=VALUE")
        try:
            args.engine_kwargs[key] = json.loads(value.lower() if value.lower() in ("true", "false") else value)
        except json.JSONDecodeError:
            args.engine_kwargs[key] = value
    return args


KERNEL_NAMES = ("custom", "torch", "auto")
DEFAULT_KERNELS = "default"   # the rows' kernels column when --kernels is not given


def kernel_choices(values, error):
    """--kernels values -> the engine's kernels= choices, in run order. Each value is a comma list of
    custom / torch / auto, or (containing "=") one per-family choice such as attention=torch,remask=custom."""
    choices = []
    for value in values:
        items = [value] if "=" in value else [v for v in value.split(",") if v]
        for item in items:
            if "=" not in item and item not in KERNEL_NAMES:
                error(f"--kernels: {item!r} not among {', '.join(KERNEL_NAMES)} (or FAMILY=CHOICE,...)")
            if item not in choices:
                choices.append(item)
    return choices or [DEFAULT_KERNELS]


def run_engine(eng, ids, kw, mode):
    """One generation; returns its forward count."""
    return eng.generate(ids, seed=0, cache=None if mode == "exact" else mode, **kw).nfe


def run_reference(ref, ids, kw):
    """reference.generate on the weights' device (ids there: the tensors it creates land there too)."""
    with torch.device(ids.device):
        return reference.generate(ref, ids, mask_id=ref.cfg.mask_token_id, seed=0, **kw)[1]


def timed_steps(row, cap: int) -> int:
    """Steps to run: the schedule's, or, for the exact mode's top-k schedule with 0 < cap < steps,
    the fewest whole blocks' worth >= 1 step a block (each exact forward costs the same however many
    tokens it unmasks, so ms/step carries over to the one-token-per-step schedule)."""
    steps, blocks = row["steps"], row["gen_length"] // row["block_length"]
    if row["schedule"] != "steps" or row["mode"] != "exact" or cap <= 0 or cap >= steps:
        return steps
    return blocks * max(1, cap // blocks)


def measure_row(row, eng, ref, ids, args, limits, deadline) -> dict:
    device, cfg = eng.device, eng.cfg
    B, P, G, b = row["batch"], row["prompt_len"], row["gen_length"], row["block_length"]
    if row["path"] == "engine":
        cap, repeats = args.max_steps, args.repeats
        run = lambda kw: run_engine(eng, ids, kw, row["mode"])  # noqa: E731
    else:
        cuda = measure.is_cuda(device)
        cap = (1 if cuda else 0) if args.ref_max_steps < 0 else args.ref_max_steps
        repeats = (1 if cuda else args.repeats) if args.ref_repeats < 0 else args.ref_repeats
        ids = ids.to(device)
        run = lambda kw: run_reference(ref, ids, kw)  # noqa: E731
    steps = timed_steps(row, cap)
    kw = dict(gen_length=G, block_length=b, steps=steps, threshold=row["threshold"])
    seconds, nfe = measure.time_runs(lambda: run(kw), device, repeats, deadline)
    ms = 1e3 * seconds / nfe
    row.update(timed_steps=steps, nfe=nfe, seconds_per_run=seconds, ms_per_step=ms,
               timing=f"median of {repeats} runs" + ("" if steps == row["steps"] else f" of {steps} steps"))
    # one token a step, timed on fewer steps: the full schedule's time is steps x ms/step
    row["tokens_per_s"] = B * G / (seconds if steps == row["steps"] else row["steps"] * ms / 1e3)
    quant = None if row["quant"] == "none" else row["quant"]
    cost = roofline.step_cost(cfg, B, P, G, b, "reference" if row["path"] == "reference" else row["mode"],
                              nfe / (G // b), eng.model.dtype.itemsize, quant)
    row.update(measure.roofline_row(cost, ms / 1e3, limits))
    row["pct_flops"], row["pct_bytes"] = 100 * row["roofline_flops"], 100 * row["roofline_bytes"]
    return row


def configurations(args, with_reference: bool = True):
    """(schedule, batch, (prompt, gen), mode, path) in run order: cheapest first, so that a time budget
    cuts the largest batches. The reference runs the exact mode only (its full-sequence generation),
    and not at all on quantized weights (with_reference False)."""
    for schedule in args.schedules.split(","):
        for B in ints(args.batch):
            for lengths in args.lengths:
                for mode in args.modes.split(","):
                    for path in [p for p in args.paths.split(",") if p]:
                        if path == "engine" or (mode == "exact" and with_reference):
                            yield schedule, B, lengths, mode, path


def run_model(model_name, quant, kernels, args, device, limits, deadline, out_rows, save, with_reference=True,
              tensor_parallel=1):
    """Every configuration on one engine: model, weight format, kernels choice and rank count
    (with_reference False: the reference rows were measured with another engine of the same model)."""
    dtype = DTYPES[args.dtype]
    quant = None if quant == "none" else quant
    engine_kwargs = dict(args.engine_kwargs, **({} if kernels == DEFAULT_KERNELS else dict(kernels=kernels)))
    if tensor_parallel > 1:
        engine_kwargs["tensor_parallel"] = tensor_parallel
    failed = dict(model=model_name or args.model, quant=quant or "none", kernels=kernels,
                  tensor_parallel=tensor_parallel)
    try:
        eng, ref, label = synthetic.build(args.model, model_name, args.n_layers, dtype, device, engine_kwargs, quant)
    except torch.cuda.OutOfMemoryError:
        out_rows.append(dict(failed, status="oom (weights)"))
        return save()
    except (TypeError, ValueError, RuntimeError) as e:  # an option, format, kernels or rank count not taken
        out_rows.append(dict(failed, status=f"error: {e}"))
        print(f"bench_generate: {model_name or args.model} {quant or ''} kernels {kernels}: {e}", flush=True)
        return save()
    cfg = eng.cfg
    weights_gib = weight_bytes(eng.model)["total"] / 2 ** 30  # codes, scales, zeros and the dense rest
    allocated_gib = torch.cuda.memory_allocated(device) / 2 ** 30 if measure.is_cuda(device) else None
    for schedule, B, (P, G), mode, path in configurations(args, ref is not None and with_reference):
        ids = torch.randint(0, cfg.vocab_size, (B, P), generator=torch.Generator().manual_seed(B))
        ids = torch.where(ids == cfg.mask_token_id, (ids + 1) % cfg.vocab_size, ids)  # on the CPU, as callers pass
        row = dict(model=label, parameters=cfg.num_parameters, weights_gib=weights_gib, allocated_gib=allocated_gib,
                   lengths=f"{P}+{G}",
                   prompt_len=P, gen_length=G, block_length=args.block_length, batch=B, steps=args.steps or G,
                   schedule=schedule, mode=mode, quant=quant or "none",
                   kernels="-" if path == "reference" else kernels, path=path,
                   tensor_parallel=1 if path == "reference" else tensor_parallel,
                   threshold=args.threshold if schedule == "threshold" else None, status="ok")
        out_rows.append(row)
        if measure.is_cuda(device):
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        try:
            with measure.CollectiveClock(device) as clock:
                start = time.perf_counter()
                measure_row(row, eng, ref, ids, args, limits, deadline)
            if path == "engine" and tensor_parallel > 1:   # share of the row's wall time in collectives
                row["collective_share"] = clock.seconds / (time.perf_counter() - start)
                row["collective_pct"] = 100 * row["collective_share"]
        except measure.OutOfTime:
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
        print(f"[{time.strftime('%H:%M:%S')}] {label} P+G {P}+{G} batch {B} {schedule} {mode} {path} "
              f"kernels {row['kernels']}: {row['status']}, {results.fmt(row.get('ms_per_step'))} ms/step", flush=True)
        save()
    if hasattr(eng, "close"):
        eng.close()                       # a tensor-parallel engine's other ranks end here
    del eng, ref
    gc.collect()
    if measure.is_cuda(device):
        torch.cuda.empty_cache()


def add_speedups(rows):
    """speedup = engine tokens/s over the reference's on the same model, lengths, batch and schedule
    (quantized rows too: the reference runs on the dense weights)."""
    key = lambda r: (r.get("model"), r.get("lengths"), r.get("batch"), r.get("schedule"))  # noqa: E731
    base = {key(r): r["tokens_per_s"] for r in rows if r.get("path") == "reference" and "tokens_per_s" in r}
    for r in rows:
        if r.get("path") == "engine" and "tokens_per_s" in r and key(r) in base:
            r["speedup"] = r["tokens_per_s"] / base[key(r)]


def add_kernel_ratios(rows):
    """x torch = tokens/s of an engine row over the tokens/s of the row with kernels "torch" and
    otherwise the same configuration (above 1: faster than the plain-torch kernels)."""
    key = lambda r: tuple(r.get(k) for k in ("model", "quant", "lengths", "batch", "schedule", "mode"))  # noqa: E731
    base = {key(r): r["tokens_per_s"] for r in rows
            if r.get("path") == "engine" and r.get("kernels") == "torch" and "tokens_per_s" in r}
    for r in rows:
        if r.get("path") == "engine" and "tokens_per_s" in r and key(r) in base:
            r["vs_torch_kernels"] = r["tokens_per_s"] / base[key(r)]


def add_parallel_ratios(rows):
    """x 1 rank = tokens/s of a tensor-parallel engine row over the one-process row of the same
    model, weights, kernels and configuration."""
    key = lambda r: tuple(r.get(k) for k in ("model", "quant", "kernels", "lengths", "batch", "schedule",  # noqa: E731
                                             "mode"))
    base = {key(r): r["tokens_per_s"] for r in rows
            if r.get("path") == "engine" and r.get("tensor_parallel", 1) == 1 and "tokens_per_s" in r}
    for r in rows:
        if r.get("path") == "engine" and r.get("tensor_parallel", 1) > 1 and "tokens_per_s" in r and key(r) in base:
            r["vs_one_rank"] = r["tokens_per_s"] / base[key(r)]


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
    settings = {k: v for k, v in vars(args).items() if k not in ("lengths", "engine_option", "kernels")}
    result = dict(kind="bench_generate", **info, dtype=args.dtype, settings=settings, limits=limits, rows=rows)
    save = lambda: results.write_json(path, result)  # noqa: E731
    for name in ([None] if args.model else args.synthetic.split(",")):
        for quant in args.quant.split(","):
            for i, kernels in enumerate(args.kernel_choices):  # the reference once, with the first engine
                for j, tp in enumerate(ints(args.tensor_parallel)):
                    run_model(name, quant, kernels, args, device, limits, deadline, rows, save,
                              with_reference=i == 0 and j == 0, tensor_parallel=tp)
    add_speedups(rows)
    add_kernel_ratios(rows)
    add_parallel_ratios(rows)
    result["seconds"] = time.monotonic() - started
    save()
    where = info.get("gpu") or f"{info['cpu']}, {info['torch_threads']} threads"
    print(f"\nresults: {path}")
    for r in rows:
        if "speedup" in r:
            print(f"speed-up over the reference path: {r['speedup']:.2f}x ({r['model']}, P+G {r['lengths']}, "
                  f"batch {r['batch']}, {r['schedule']}, {r['mode']}, kernels {r['kernels']})")
        if "vs_one_rank" in r:
            print(f"{r['tensor_parallel']} ranks over one process: {r['vs_one_rank']:.2f}x, "
                  f"{100 * r.get('collective_share', 0):.0f}% of the time in collectives ({r['model']}, "
                  f"P+G {r['lengths']}, batch {r['batch']}, {r['schedule']}, {r['mode']})")
        if "vs_torch_kernels" in r and r["kernels"] != "torch":
            print(f"kernels {r['kernels']} over torch: {r['vs_torch_kernels']:.2f}x ({r['model']}, "
                  f"P+G {r['lengths']}, batch {r['batch']}, {r['schedule']}, {r['mode']})")
    print(f"\n{where}, {args.dtype}, block {args.block_length}, {info['date']}\n")
    print(results.markdown_table(rows, results.GENERATE_COLUMNS))


if __name__ == "__main__":
    main()
