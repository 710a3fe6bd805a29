"""Timing on the CPU or a CUDA device, and the hardware limits measured in the same run.

CUDA times come from torch.cuda.Event pairs on the current stream (the GPU timeline);
CPU times from time.perf_counter. Every CUDA-only call sits behind `device.type == "cuda"`.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, List

import torch


def is_cuda(device: torch.device) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: torch.device) -> None:
    if is_cuda(device):
        torch.cuda.synchronize(device)


class Stamp:
    """A point in time: a recorded CUDA event, or a perf_counter reading on the CPU."""

    def __init__(self, device: torch.device):
        if is_cuda(device):
            self.event = torch.cuda.Event(enable_timing=True)
            self.event.record()
            self.t = None
        else:
            self.event, self.t = None, time.perf_counter()

    def seconds_to(self, later: "Stamp") -> float:
        if self.event is not None:
            later.event.synchronize()
            return self.event.elapsed_time(later.event) / 1e3
        return later.t - self.t


def time_calls(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1,
               inner: int = 1) -> List[float]:
    """Seconds per call of fn(): `repeats` samples of `inner` back-to-back calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = Stamp(device)
        for _ in range(inner):
            fn()
        samples.append(start.seconds_to(Stamp(device)) / inner)
    return samples


def median(xs: List[float]) -> float:
    return statistics.median(xs)


# ----------------------------------------------------------------------------- hardware limits


def matmul_peak(device: torch.device, size: int = 0, repeats: int = 10) -> dict:
    """Dense matmul rate of a size^3 product: bf16 on CUDA (8192), float32 on the CPU (1024)."""
    cuda = is_cuda(device)
    size = size or (8192 if cuda else 1024)
    dtype = torch.bfloat16 if cuda else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=g, device=device).to(dtype)
    b = torch.randn(size, size, generator=g, device=device).to(dtype)
    out = torch.empty(size, size, dtype=dtype, device=device)
    secs = time_calls(lambda: torch.mm(a, b, out=out), device, repeats, warmup=2, inner=5 if cuda else 1)
    best = min(secs)
    return dict(dtype=str(dtype).replace("torch.", ""), size=size, seconds=best,
                tflop_per_s=2 * size ** 3 / best / 1e12)


def copy_bandwidth(device: torch.device, mib: int = 0, repeats: int = 10) -> dict:
    """Device-memory bandwidth of a large copy: 2 x bytes (read + write) / time; 2 GiB on CUDA, 256 MiB on the CPU."""
    cuda = is_cuda(device)
    mib = mib or (2048 if cuda else 256)
    src = torch.ones(mib * 2 ** 20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    secs = time_calls(lambda: dst.copy_(src), device, repeats, warmup=2, inner=5 if cuda else 1)
    best = min(secs)
    return dict(mib=mib, seconds=best, gb_per_s=2 * mib * 2 ** 20 / best / 1e9)


def hardware_limits(device: torch.device, matmul_size: int = 0, copy_mib: int = 0) -> dict:
    """Both limits, measured now (the fastest of the timed samples); frees what it allocated."""
    out = dict(matmul=matmul_peak(device, matmul_size), copy=copy_bandwidth(device, copy_mib))
    if is_cuda(device):
        torch.cuda.empty_cache()
    return out


def roofline_row(cost, seconds_per_step: float, limits: dict) -> dict:
    """Achieved rates of a step of `cost` (roofline.StepCost) and their fractions of the measured limits."""
    tflops = cost.flops / seconds_per_step / 1e12
    gbs = cost.bytes / seconds_per_step / 1e9
    return dict(flops_per_step=cost.flops, bytes_per_step=cost.bytes, tflop_per_s=tflops, gb_per_s=gbs,
                roofline_flops=tflops / limits["matmul"]["tflop_per_s"],
                roofline_bytes=gbs / limits["copy"]["gb_per_s"])


# ----------------------------------------------------------------------------- whole runs


class OutOfTime(Exception):
    """The run's time budget is spent: the configurations left are skipped."""


def time_runs(run: Callable[[], int], device: torch.device, repeats: int, deadline: float = float("inf")):
    """(median seconds, forwards) of `repeats` whole calls of run() -> forwards, after one untimed
    warm-up call; OutOfTime before any call that starts after `deadline` (a time.monotonic value)."""
    secs, nfe = [], 0
    for i in range(repeats + 1):
        if time.monotonic() > deadline:
            raise OutOfTime()
        start = Stamp(device)
        nfe = run()
        if i > 0:
            secs.append(start.seconds_to(Stamp(device)))
    return median(secs), nfe


class CollectiveClock:
    """Seconds this process spends inside torch.distributed collectives while active (a tensor-
    parallel engine's all-reduces, vocab-parallel all-gathers and call announcements). On CUDA each
    collective is synchronized around, so the share is of wall time, slightly perturbed; the
    collectives inside a replayed CUDA graph are not seen (use_cuda_graphs=false sees them all)."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist
        from illada_rt.model import shard
        self.device, self.seconds = device, 0.0
        self._patched = [(dist, "all_reduce"), (dist, "broadcast_object_list"), (shard, "_gather_into")]
        self._saved = []

    def _timed(self, fn):
        def run(*args, **kwargs):
            if is_cuda(self.device) and torch.cuda.is_current_stream_capturing():
                return fn(*args, **kwargs)     # recorded into a CUDA graph, not run: nothing to time
            synchronize(self.device)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                synchronize(self.device)
                self.seconds += time.perf_counter() - start
        return run

    def __enter__(self) -> "CollectiveClock":
        for owner, name in self._patched:
            self._saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, self._timed(getattr(owner, name)))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, fn in self._saved:
            setattr(owner, name, fn)
        self._saved.clear()
