"""Quantized linear layers (int8, int4, fp8) against a bf16 dense matmul at LLaDA-8B shapes.

    python bench/bench_quant_matmul.py                          # CUDA, LLaDA-8B shapes, M from 32 to 16384
    python bench/bench_quant_matmul.py --m 32 --formats int4 --out quant.json
    python bench/bench_quant_matmul.py --device cpu             # tiny shapes: a smoke run of every path

Weights w [N, K] (random, ~1/sqrt(K)) are quantized with illada_rt.quant.formats; x [M, K] is
bf16 (CUDA) or float32 (CPU). Each configuration runs --warmup times, then --repeats timed runs
(CUDA events on the GPU, a wall clock on the CPU); the median is reported with the achieved
TFLOP/s (2*M*N*K per call), the GB/s of weight bytes read once (packed weight and scales), and
the speed-up over F.linear with the bf16 weight (cuBLAS) at the same shape (>1: faster).
Shapes of LLaDA-8B: q/k/v/o (4096, 4096), gate+up packed (2*12288, 4096), down (4096, 12288).
M = 32 is one batch-1 block of rows (the block-only denoising steps), 4096 and 16384 full sequences.

int8 and int4 run both paths of illada_rt.ops (path "kernel": the compiled tensor-core matmul,
up to --kernel-max-m rows; path "dequant": dequantize, then cuBLAS). The last lines give, per
format and shape, the largest M up to which the kernel beats dequant at every measured M, and
the value of ILLADA_QUANT_MATMUL_MAX_M (the rows up to which path "auto" takes the kernel) that
keeps the faster path at every measured shape.

--out FILE.json is rewritten after every row (the crossover too), so a run cut short keeps the rows done.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling modules

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from illada_rt import build_info, ops  # noqa: E402
from illada_rt.quant import formats  # noqa: E402

import results  # noqa: E402

LLADA_SHAPES = [(4096, 4096), (2 * 12288, 4096), (4096, 12288)]
CPU_SHAPES = [(64, 128), (96, 256)]


def weight_bytes(qw: formats.QuantizedWeight) -> int:
    return sum(t.numel() * t.element_size() for t in (qw.qweight, qw.scale, qw.zero) if t is not None)


def quant_call(qw: formats.QuantizedWeight, x: torch.Tensor, path: str):
    if qw.format == "int8":
        return lambda: ops.int8_linear(x, qw.qweight, qw.scale, path=path)
    if qw.format == "int4":
        return lambda: ops.int4_linear(x, qw.qweight, qw.scale, qw.zero, qw.group_size, path=path)
    return lambda: ops.fp8_linear(x, qw.qweight, qw.scale)


def paths(fmt: str, device: torch.device, m: int, kernel_max_m: int):
    """(row label, ops path) pairs to time for one format and M."""
    if fmt == "fp8":
        return [("scaled_mm" if device.type == "cuda" else "float32 matmul", "auto")]
    if device.type == "cuda" and m <= kernel_max_m:
        return [("kernel", "kernel"), ("dequant", "dequant")]
    return [("dequant", "dequant")]


def crossover(rows: list) -> dict:
    """Per "format NxK": the largest M up to which the kernel beats dequant at every measured M
    (0: never); and "max_m": the smallest of them, the ILLADA_QUANT_MATMUL_MAX_M that keeps the
    faster path at every measured shape (None where no kernel row was timed)."""
    ms = {}
    for r in rows:
        if r.get("path") in ("kernel", "dequant") and "ms" in r:
            ms.setdefault((r["format"], r["n"], r["k"], r["m"]), {})[r["path"]] = r["ms"]
    wins = {}
    for (fmt, n, k, m), t in sorted(ms.items()):
        if "kernel" not in t or "dequant" not in t:
            continue
        key = f"{fmt} {n}x{k}"
        best, still = wins.get(key, (0, True))
        if still and t["kernel"] < t["dequant"]:
            wins[key] = (m, True)
        else:
            wins[key] = (best, False)
    out = {key: best for key, (best, _) in wins.items()}
    out["max_m"] = min(out.values()) if out else None
    return out


def time_call(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fp8_unsupported(device: torch.device):
    """Why fp8 cannot run here, or None."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        return f"compute capability {torch.cuda.get_device_capability(device)} < (8, 9)"
    return None


def row(fmt, path, n, k, m, seconds, nbytes, dense_seconds):
    return dict(format=fmt, path=path, n=n, k=k, m=m, ms=seconds * 1e3, tflops=2 * m * n * k / seconds / 1e12,
                weight_gbps=nbytes / seconds / 1e9,
                speedup_vs_bf16=None if dense_seconds is None else dense_seconds / seconds)


def run(args, save=lambda result: None) -> dict:
    """Every (shape, M, format, path); save(result) is called after every row."""
    device = torch.device(args.device)
    if device.type == "cuda" and not (torch.cuda.is_available() and build_info()["cuda"]):
        raise RuntimeError("--device cuda needs a CUDA device and a CUDA build of illada_rt")
    shapes = CPU_SHAPES if device.type == "cpu" and not args.shapes else (args.shapes or LLADA_SHAPES)
    ms = args.m or ([1, 7] if device.type == "cpu" else [32, 64, 128, 256, 512, 1024, 4096, 16384])
    xdtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    result = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        torch_cuda=torch.version.cuda, torch=torch.__version__, build=build_info(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        group_size=args.group_size, warmup=args.warmup, repeats=args.repeats,
        quant_matmul_max_m=ops.QUANT_MATMUL_MAX_M, rows=[], crossover=crossover([]))
    rows = result["rows"]

    def add(r: dict) -> None:  # every row is saved as soon as it is measured
        rows.append(r)
        result["crossover"] = crossover(rows)
        done = (f"{r['ms']:.4f} ms" if "ms" in r else
                f"skipped: {r['skipped']}" if "skipped" in r else f"error: {r['error']}")
        print(f"{r['format']} {r.get('path', '-')} {r['n']}x{r['k']} M {r['m']}: {done}", flush=True)
        save(result)

    for n, k in shapes:
        w = (torch.randn(n, k, generator=g, device=device) * k ** -0.5).to(xdtype)
        quantized = {fmt: formats.quantize_weight(w, fmt, group_size=args.group_size) for fmt in args.formats}
        for m in ms:
            x = torch.randn(m, k, generator=g, device=device).to(xdtype)
            dense = time_call(lambda: F.linear(x, w), device, args.warmup, args.repeats)
            add(row(f"{xdtype}".replace("torch.", ""), "torch", n, k, m, dense, w.numel() * w.element_size(), dense))
            for fmt, qw in quantized.items():
                reason = fp8_unsupported(device) if fmt == "fp8" else None
                if reason:
                    add(dict(format=fmt, n=n, k=k, m=m, skipped=reason))
                    continue
                for label, path in paths(fmt, device, m, args.kernel_max_m):
                    try:
                        seconds = time_call(quant_call(qw, x, path), device, args.warmup, args.repeats)
                    except ValueError as e:  # a shape the kernel does not take
                        add(dict(format=fmt, path=label, n=n, k=k, m=m, skipped=str(e)))
                        continue
                    except RuntimeError as e:  # a failing kernel: recorded, and the other rows go on
                        add(dict(format=fmt, path=label, n=n, k=k, m=m, error=str(e).splitlines()[0][:200]))
                        continue
                    add(row(fmt, label, n, k, m, seconds, weight_bytes(qw), dense))
    return result


def print_rows(result: dict) -> None:
    """A markdown table (gpu_check.sh collects the lines starting with "|"), then the crossover."""
    print(f"# {result['device']}, torch {result['torch']}, int4 group {result['group_size']}")
    print("| format | path | N | K | M | ms | TFLOP/s | weight GB/s | x dense |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        head = f"| {r['format']} | {r.get('path', '-')} | {r['n']} | {r['k']} | {r['m']} |"
        if "ms" not in r:
            print(f"{head} " + (f"skipped: {r['skipped']}" if "skipped" in r else f"error: {r['error']}") + " | | | |")
            continue
        print(f"{head} {r['ms']:.4f} | {r['tflops']:.2f} | {r['weight_gbps']:.1f} | {r['speedup_vs_bf16']:.2f} |")
    cross = result["crossover"]
    if cross["max_m"] is not None:
        print("\n| format NxK | kernel beats dequant + cuBLAS at every measured M up to |")
        print("|---|---|")
        for key, m in cross.items():
            if key != "max_m":
                print(f"| {key} | {m} |")
        print(f"faster path at every measured shape: ILLADA_QUANT_MATMUL_MAX_M={cross['max_m']} "
              f"(now {result['quant_matmul_max_m']})")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--formats", default="int8,int4,fp8", type=lambda s: s.split(","))
    p.add_argument("--m", type=int, nargs="+", help="token rows (default: 32 to 16384; CPU: 1 7)")
    p.add_argument("--kernel-max-m", type=int, default=1024, help="time the kernel path up to this M (CUDA)")
    p.add_argument("--shapes", type=lambda s: tuple(int(v) for v in s.split("x")), nargs="+",
                   help="weight shapes NxK (default: LLaDA-8B's; CPU: tiny ones)")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out", help="write the results as JSON here (rewritten after every row)")
    args = p.parse_args(argv)
    bad = set(args.formats) - set(formats.FORMATS)
    if bad:
        p.error(f"unknown formats {sorted(bad)}; choose from {formats.FORMATS}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = run(args, save=(lambda r: results.write_json(args.out, r)) if args.out else (lambda r: None))
    print_rows(result)
    if args.out:
        results.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
