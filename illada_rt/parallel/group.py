"""The tensor-parallel ranks of one engine: the torch.distributed process group (NCCL on CUDA,
gloo on the CPU), who is who, and how long a collective may wait.

Two ways in:
    spawned     Engine.from_pretrained(..., tensor_parallel=N) in one process: it is rank 0 and
                starts ranks 1..N-1 itself (launch.py), meeting them at a TCP store on a free
                loopback port;
    torchrun    every rank runs the same program (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR,
                MASTER_PORT; multi-node with --nnodes); rank 0 owns the API, the others follow it.
A collective that waits longer than `timeout` (a rank died or hangs) raises instead of blocking:
the next call on the engine fails with a clear error in bounded time.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 60.0
TIMEOUT_ENV = "ILLADA_TP_TIMEOUT_S"      # seconds a collective may wait (default 60)


def collective_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


def free_port() -> int:
    """A TCP port free on the loopback interface now (for the rendezvous of spawned ranks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


@dataclass
class TensorGroup:
    rank: int
    world: int
    group: object = None          # the process group (None: torch.distributed's default group)
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def leader(self) -> bool:
        return self.rank == 0


def join(rank: int, world: int, device: torch.device, init_method: Optional[str] = None,
         timeout: Optional[float] = None) -> TensorGroup:
    """Join (or create) the default process group as `rank` of `world`: NCCL for CUDA devices,
    gloo otherwise; init_method None reads torchrun's environment."""
    timeout = collective_timeout() if timeout is None else timeout
    if init_method is not None and dist.is_initialized():
        raise RuntimeError("another tensor-parallel engine (or torch.distributed process group) is open in this "
                           "process, and torch.distributed holds one per process: close it first")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")   # a timed-out collective raises
        kw = dict(backend=backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout))
        if init_method is not None:
            kw["init_method"] = init_method
        if backend == "nccl":
            kw["device_id"] = device
        dist.init_process_group(**kw)
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise RuntimeError(f"tensor_parallel={world}: the process group has {dist.get_world_size()} ranks and this "
                           f"is rank {dist.get_rank()}, not rank {rank} of {world}")
    return TensorGroup(rank, world, None, timeout)


def leave() -> None:
    """Leave the process group (the engine is closed)."""
    if dist.is_initialized():
        dist.destroy_process_group()
