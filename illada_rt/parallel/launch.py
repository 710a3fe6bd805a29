"""Rank 0 starts ranks 1..N-1 as processes of its own and watches them.

A follower dies with its parent (Linux: PR_SET_PDEATHSIG, and a thread that notices the parent is
gone on any platform): no rank outlives a crashed or killed leader. The leader checks its
followers before every call: a dead one is named with its exit code, and the engine is closed.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import List, Tuple

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
    """The ranks 1..N-1 a leader started: each a fresh Python process (`python -c`) that imports
    `target` = (module, function) and calls it with (rank, world, leader pid, *args); args must be
    JSON. Fresh processes, not multiprocessing's spawn: a caller's script is never re-run in them."""

    def __init__(self, target: Tuple[str, str], world: int, args: tuple):
        module, function = target
        self.procs: List[subprocess.Popen] = []
        for rank in range(1, world):
            payload = json.dumps([rank, world, os.getpid(), *args])
            self.procs.append(subprocess.Popen([sys.executable, "-c", _BOOT, module, function, payload]))

    def check_alive(self) -> None:
        """RankFailure naming every follower that has exited."""
        dead = [(rank, p.returncode) for rank, p in enumerate(self.procs, 1) if p.poll() is not None]
        if dead:
            raise RankFailure("tensor parallelism: " + ", ".join(f"rank {r} exited (code {c})" for r, c in dead))

    def stop(self, timeout: float = 10.0) -> None:
        """Wait for the followers to end (they do once the leader closes); then terminate, then kill."""
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            for end in (p.terminate, p.kill):
                if p.poll() is None:
                    end()
                    try:
                        p.wait(2.0)
                    except subprocess.TimeoutExpired:
                        pass


_BOOT = ("import importlib, json, sys; "
         "getattr(importlib.import_module(sys.argv[1]), sys.argv[2])(*json.loads(sys.argv[3]))")
