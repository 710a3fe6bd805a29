"""illada_rt's kernels against the plain-torch way of computing the same thing.

    python bench/bench_kernels.py                                  # CPU, small shapes, float32
    python bench/bench_kernels.py --device cuda --dtype bfloat16   # 8B-model shapes

attention vs torch SDPA; remask vs softmax + argmax + gather + topk + scatter (one token per row);
RMSNorm vs F.rms_norm; RoPE vs the rotate-half formula on cached cos/sin; SwiGLU vs silu(gate) * up.
For each: median time of each side, achieved TFLOP/s (attention) or GB/s (the others, the least
traffic: inputs read once, outputs written once) and its fraction of the limits measured in the
same run, the ratio torch time / ours (> 1: ours is faster), and the largest difference of the
outputs as a sanity check. JSON under bench/results/ (--out), a markdown table printed last.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling modules

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from illada_rt import ops  # noqa: E402
from illada_rt.device import resolve_device  # noqa: E402
from illada_rt.engine import DTYPES  # noqa: E402

import measure  # noqa: E402
import results  # noqa: E402
from device_info import device_info  # noqa: E402

# (name, shape) per size: attention (B, L, H, Hkv, hd); remask (B, Lb, V); rows x width for the rest
SHAPES = {
    "small": dict(attention=[(1, 128, 4, 2, 64)], remask=[(2, 32, 4096)], rmsnorm=[(256, 256)],
                  rope=[(1, 128, 4, 64)], swiglu=[(256, 704)]),
    "8b": dict(attention=[(1, 512, 32, 8, 128), (1, 1024, 32, 32, 128), (8, 1024, 32, 8, 128)],
               remask=[(1, 32, 126464), (32, 32, 155136)], rmsnorm=[(8192, 4096)],
               rope=[(8, 1024, 32, 128)], swiglu=[(8192, 14336)]),
}


def sdpa(q, k, v):
    """torch SDPA on our [B, L, H, hd] layout (transposed views), GQA by head grouping."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    try:
        return F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True).transpose(1, 2)
    except TypeError:  # torch < 2.5: no enable_gqa
        rep = q.shape[2] // k.shape[2]
        kt, vt = kt.repeat_interleave(rep, 1), vt.repeat_interleave(rep, 1)
        return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)


def case_attention(shape, dtype, device, g):
    B, L, H, Hkv, hd = shape
    q, k, v = (torch.randn(B, L, h, hd, generator=g, device=device).to(dtype) for h in (H, Hkv, Hkv))
    out = torch.empty_like(q)
    return (lambda: ops.attention(q, k, v, out=out), lambda: sdpa(q, k, v), "TFLOP/s", 4 * B * H * L * L * hd)


def case_remask(shape, dtype, device, g):
    B, Lb, V = shape
    mask_id, lo = V - 1, 8
    logits = (torch.randn(B, Lb, V, generator=g, device=device) * 3).to(dtype)
    start = torch.randint(0, V - 1, (B, lo + Lb), generator=g, device=device)
    start[:, lo:] = mask_id
    tokens = start.clone()
    dev = dict(dtype=torch.int64, device=device)
    seeds, row_offset, step = torch.arange(B, **dev), torch.zeros(B, **dev), torch.zeros(B, **dev)
    k = torch.ones(B, **dev)                                     # one token a row
    work = ops.remask_workspace(B, Lb, device) if measure.is_cuda(device) else None

    def ours():
        tokens.copy_(start)
        ops.remask_(logits, tokens, lo, vocab=V, mask_id=mask_id, seeds=seeds, row_offset=row_offset, step=step,
                    k=k, workspace=work)
        return tokens[:, lo:]

    def torch_ops():
        tokens.copy_(start)
        probs = logits.float().softmax(-1)                       # [B, Lb, V]
        x0 = probs.argmax(-1)                                    # [B, Lb]
        conf = probs.gather(-1, x0[..., None]).squeeze(-1)       # [B, Lb]
        span = tokens[:, lo:]
        conf = torch.where(span == mask_id, conf, float("-inf"))
        pick = conf.topk(1, -1).indices                          # [B, 1]: one token a step
        span.scatter_(1, pick, x0.gather(1, pick))
        return span

    return ours, torch_ops, "GB/s", B * Lb * V * logits.element_size()


def case_rmsnorm(shape, dtype, device, g):
    n, d = shape
    x = torch.randn(n, d, generator=g, device=device).to(dtype)
    w = (1 + 0.1 * torch.randn(d, generator=g, device=device)).to(dtype)
    out = torch.empty_like(x)
    if hasattr(F, "rms_norm"):
        ref = lambda: F.rms_norm(x, (d,), w, 1e-5)  # noqa: E731
    else:
        ref = lambda: w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)  # noqa
    return lambda: ops.rmsnorm(x, w, 1e-5, out=out), ref, "GB/s", 2 * x.numel() * x.element_size()


def case_rope(shape, dtype, device, g):
    B, L, H, hd = shape
    x = torch.randn(B, L, H, hd, generator=g, device=device).to(dtype)
    cos, sin = (t.to(device) for t in ops.rope_table(hd, L, 10000.0))
    c, s = cos[None, :, None, :], sin[None, :, None, :]               # [1, L, 1, hd/2]

    def torch_rope():
        x1, x2 = x[..., : hd // 2].float(), x[..., hd // 2:].float()
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1).to(dtype)

    y = x.clone()  # rotated in place: the first call gives rope(x), later calls keep rotating (norms kept)
    return lambda: ops.rope_(y, cos, sin), torch_rope, "GB/s", 2 * x.numel() * x.element_size()


def case_swiglu(shape, dtype, device, g):
    n, f = shape
    gate_up = torch.randn(n, 2 * f, generator=g, device=device).to(dtype)
    gate, up = gate_up[:, :f], gate_up[:, f:]
    out = torch.empty(n, f, dtype=dtype, device=device)
    return (lambda: ops.swiglu(gate, up, out=out), lambda: F.silu(gate) * up, "GB/s",
            3 * n * f * gate_up.element_size())


CASES = dict(attention=case_attention, remask=case_remask, rmsnorm=case_rmsnorm, rope=case_rope, swiglu=case_swiglu)


def run_case(name, shape, dtype, device, args, limits) -> dict:
    row = dict(kernel=name, shape="x".join(map(str, shape)), dtype=str(dtype).replace("torch.", ""), status="ok")
    g = torch.Generator(device=device).manual_seed(0)
    try:
        ours, theirs, unit, amount = CASES[name](shape, dtype, device, g)
        a, b = ours().float(), theirs().float()
        row["max_diff"] = float((a - b).abs().max()) if name != "remask" else float((a != b).float().mean())
        inner = args.inner or (20 if measure.is_cuda(device) else 1)
        for side, fn in (("ours", ours), ("torch", theirs)):
            secs = measure.median(measure.time_calls(fn, device, args.repeats, warmup=2, inner=inner))
            row[side + "_ms"] = 1e3 * secs
            row[side + "_rate"] = amount / secs / (1e12 if unit == "TFLOP/s" else 1e9)
        row["unit"], row["speedup"] = unit, row["torch_ms"] / row["ours_ms"]
        peak = limits["matmul"]["tflop_per_s"] if unit == "TFLOP/s" else limits["copy"]["gb_per_s"]
        row["pct_peak"] = 100 * row["ours_rate"] / peak
    except torch.cuda.OutOfMemoryError:
        row["status"] = "oom"
    except (RuntimeError, ValueError) as e:
        row["status"] = "error: " + str(e).splitlines()[0][:200]
    if measure.is_cuda(device):
        torch.cuda.empty_cache()
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--size", default=None, choices=sorted(SHAPES), help="default: 8b on CUDA, small on CPU")
    ap.add_argument("--kernels", default=",".join(CASES), help="comma list of " + ", ".join(CASES))
    ap.add_argument("--repeats", type=int, default=10, help="timed samples per side (median)")
    ap.add_argument("--inner", type=int, default=0, help="calls per sample (default 20 on CUDA, 1 on CPU)")
    ap.add_argument("--matmul-size", type=int, default=0)
    ap.add_argument("--copy-mib", type=int, default=0)
    ap.add_argument("--out", help="results folder or .json file (default bench/results/)")
    ap.add_argument("--suffix", default="kernels")
    args = ap.parse_args(argv)
    bad = [k for k in args.kernels.split(",") if k not in CASES]
    if bad:
        ap.error(f"--kernels: {', '.join(bad)} not among {', '.join(CASES)}")
    device = resolve_device(args.device)
    cuda = measure.is_cuda(device)
    dtype = DTYPES[args.dtype or ("bfloat16" if cuda else "float32")]
    size = args.size or ("8b" if cuda else "small")
    started = time.monotonic()
    info = device_info(device)
    limits = measure.hardware_limits(device, args.matmul_size, args.copy_mib)
    rows = []
    result = dict(kind="bench_kernels", **info, dtype=str(dtype).replace("torch.", ""), size=size,
                  settings=vars(args), limits=limits, rows=rows)
    path = results.result_path(args.out, info, args.suffix)
    for name in args.kernels.split(","):
        for shape in SHAPES[size][name]:
            rows.append(run_case(name, shape, dtype, device, args, limits))
            r = rows[-1]
            print(f"{name} {r['shape']}: {r['status']}, ours {results.fmt(r.get('ours_ms'), '.4g')} ms, "
                  f"torch {results.fmt(r.get('torch_ms'), '.4g')} ms", flush=True)
            results.write_json(path, result)
    result["seconds"] = time.monotonic() - started
    results.write_json(path, result)
    where = info.get("gpu") or f"{info['cpu']}, {info['torch_threads']} threads"
    print(f"\nresults: {path}\nlimits: {limits['matmul']['tflop_per_s']:.3g} TFLOP/s, "
          f"{limits['copy']['gb_per_s']:.3g} GB/s; {where}, {info['date']}\n")
    print(results.markdown_table(rows, results.KERNEL_COLUMNS))


if __name__ == "__main__":
    main()
