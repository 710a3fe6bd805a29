"""Rank 0 starts ranks 1..N-1 as processes of its own (multiprocessing, spawn) and watches them.

A follower dies with its parent (Linux: PR_SET_PDEATHSIG, and a thread that notices the parent is
gone on any platform): no rank outlives a crashed or killed leader. The leader checks its
followers before every call: a dead one is named with its exit code, and the engine is closed.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from typing import Callable, List

from .mirror import RankFailure

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """In a follower: end this process when the leader's process ends."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass

    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)        # the follower's own process: the leader is gone
            time.sleep(0.5)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, name="illada-rt-parent-watch", daemon=True).start()


class Followers:
    """The spawned ranks 1..N-1 of a leader."""

    def __init__(self, target: Callable, world: int, args: tuple):
        ctx = mp.get_context("spawn")
        self.procs: List[mp.Process] = []
        for rank in range(1, world):
            p = ctx.Process(target=target, args=(rank, world, os.getpid()) + args, name=f"illada-rt-tp-rank{rank}",
                            daemon=True)
            p.start()
            self.procs.append(p)

    def check_alive(self) -> None:
        """RankFailure naming every follower that has exited."""
        dead = [(rank, p.exitcode) for rank, p in enumerate(self.procs, 1) if not p.is_alive()]
        if dead:
            raise RankFailure("tensor parallelism: " + ", ".join(f"rank {r} exited (code {c})" for r, c in dead))

    def stop(self, timeout: float = 10.0) -> None:
        """Wait for the followers to end (they do once the leader closes); then terminate, then kill."""
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(2.0)
