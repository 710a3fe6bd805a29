"""Counters of the shared engine, and their Prometheus text exposition."""
from __future__ import annotations

import collections
import threading
import time
from typing import Dict

import torch

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """Updated by the scheduler thread; read from any thread (plain counters, read atomically enough)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.started = time.monotonic()
        self.submitted = self.completed = self.failed = self.rejected = 0
        self.cancelled = 0                   # of the failed: cancelled by their caller
        self.generated_tokens = 0
        self.steps = 0
        self.step_rows = 0                   # sum over steps of the rows in the step
        self.busy_seconds = 0.0
        self.batch_sizes: Dict[int, int] = collections.Counter()   # rows in a step -> steps
        self.wait_seconds = collections.deque(maxlen=1024)         # queue wait of recent requests
        self._recent = collections.deque(maxlen=256)               # (time, tokens) of recent completions
        self._lock = threading.Lock()

    def record_step(self, rows: int, seconds: float):
        with self._lock:
            self.steps += 1
            self.step_rows += rows
            self.busy_seconds += seconds
            self.batch_sizes[rows] += 1

    def record_done(self, request, tokens: int):
        with self._lock:
            self.completed += 1
            self.generated_tokens += tokens
            self._recent.append((time.monotonic(), tokens))

    def tokens_per_second(self, window: float = 60.0) -> float:
        """Generated tokens per second over the last `window` seconds (completed requests)."""
        now = time.monotonic()
        with self._lock:
            total = sum(n for t, n in self._recent if now - t <= window)
        return total / min(window, max(now - self.started, 1e-9))

    def snapshot(self, queue_depth: int, active: int) -> dict:
        with self._lock:
            out = dict(requests_submitted=self.submitted, requests_completed=self.completed,
                       requests_failed=self.failed, requests_cancelled=self.cancelled,
                       requests_rejected=self.rejected,
                       generated_tokens=self.generated_tokens, steps=self.steps,
                       mean_batch_size=self.step_rows / self.steps if self.steps else 0.0,
                       busy_seconds=self.busy_seconds, batch_sizes=dict(self.batch_sizes),
                       queue_depth=queue_depth, active_requests=active,
                       uptime_seconds=time.monotonic() - self.started)
        out["tokens_per_second"] = self.tokens_per_second()
        out["device_memory_bytes"] = (torch.cuda.memory_allocated(self.device)
                                      if self.device.type == "cuda" else None)
        return out

    def prometheus(self, queue_depth: int, active: int) -> str:
        """The snapshot in the Prometheus text format (version 0.0.4)."""
        s = self.snapshot(queue_depth, active)
        lines = []

        def metric(name, kind, help_text, value, labels=""):
            lines.extend([f"# HELP illada_{name} {help_text}", f"# TYPE illada_{name} {kind}",
                          f"illada_{name}{labels} {value}"])
        metric("requests_total", "counter", "Requests accepted into the queue.", s["requests_submitted"])
        metric("requests_completed_total", "counter", "Requests finished successfully.", s["requests_completed"])
        metric("requests_failed_total", "counter", "Requests that ended with an error, timeout or cancellation.",
               s["requests_failed"])
        metric("requests_cancelled_total", "counter", "Requests their caller cancelled (counted in failed too).",
               s["requests_cancelled"])
        metric("requests_rejected_total", "counter", "Requests refused because the queue was full.",
               s["requests_rejected"])
        metric("generated_tokens_total", "counter", "Answer tokens of completed requests.", s["generated_tokens"])
        metric("denoising_steps_total", "counter", "Batched denoising steps run.", s["steps"])
        metric("busy_seconds_total", "counter", "Seconds spent running steps.", f"{s['busy_seconds']:.6f}")
        metric("tokens_per_second", "gauge", "Generated tokens per second over the last minute.",
               f"{s['tokens_per_second']:.3f}")
        metric("queue_depth", "gauge", "Requests waiting to join a batch.", s["queue_depth"])
        metric("active_requests", "gauge", "Requests in the running batch.", s["active_requests"])
        if s["device_memory_bytes"] is not None:
            metric("device_memory_bytes", "gauge", "GPU memory allocated by torch.", s["device_memory_bytes"])
        lines += ["# HELP illada_batch_size Rows per denoising step.", "# TYPE illada_batch_size histogram"]
        sizes = s["batch_sizes"]
        for bound in BATCH_BUCKETS:
            lines.append(f'illada_batch_size_bucket{{le="{bound}"}} {sum(n for k, n in sizes.items() if k <= bound)}')
        lines.append(f'illada_batch_size_bucket{{le="+Inf"}} {s["steps"]}')
        lines.append(f"illada_batch_size_sum {sum(k * n for k, n in sizes.items())}")
        lines.append(f"illada_batch_size_count {s['steps']}")
        return "\n".join(lines) + "\n"
