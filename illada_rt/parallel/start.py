"""Bring up one tensor-parallel rank: its process group, its device, its shard of the model.

    rank 0 of a spawned group   starts ranks 1..N-1 (launch.Followers) running `follower_main`,
                                meets them at a loopback TCP store, loads its shard
    a spawned follower          joins that store, loads its shard (follower_main, via load_rank)
    a torchrun rank             joins torchrun's store (RANK, WORLD_SIZE, MASTER_ADDR/PORT)
Ranks use cuda:<local rank> on CUDA (LOCAL_RANK under torchrun; the rank when spawned), the CPU
otherwise. Every rank's kernels are its device's, with the vocab-parallel remask (remask.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..device import resolve_device
from ..loading import load_model
from ..loading.checkpoint import Checkpoint
from ..model import LLaDAModel
from ..model.shard import ModelShard
from ..ops import select_kernels
from .group import free_port, join, launched_by_torchrun
from .launch import Followers
from .mirror import Mirror
from .remask import with_vocab_parallel_remask


@dataclass
class LoadOptions:
    """What from_pretrained loads, as every rank needs it (JSON for spawned ranks: as_json / from_json)."""
    model_dir: str
    device: str
    dtype: str                     # "float32", "bfloat16" or "float16"
    quantization: Optional[str] = None
    quantize_head: bool = False
    group_size: int = 128
    kernels: Optional[str] = None
    use_cuda_graphs: bool = True

    def as_json(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_json(cls, raw: dict) -> "LoadOptions":
        return cls(**raw)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass
class Rank:
    model: LLaDAModel
    mirror: Mirror
    followers: Optional[Followers]     # rank 0 of a spawned group: the processes it started


def rank_device(device: str, rank: int) -> torch.device:
    """cuda:<local rank> for a CUDA device (made current), the CPU otherwise."""
    kind = torch.device(device).type
    if kind != "cuda":
        return resolve_device(device)
    local = int(os.environ.get("LOCAL_RANK", rank)) if launched_by_torchrun() else rank
    if local >= torch.cuda.device_count():
        raise RuntimeError(f"tensor parallelism: rank {rank} needs cuda:{local}, but torch sees "
                           f"{torch.cuda.device_count()} CUDA devices")
    torch.cuda.set_device(local)
    return resolve_device(f"cuda:{local}")


def load_rank(opts: LoadOptions, rank: int, world: int, init_method: Optional[str],
              followers: Optional[Followers] = None, progress=None) -> Rank:
    """Join the group as `rank` and load its shard (see the module docstring)."""
    device = rank_device(opts.device, rank)
    ckpt = Checkpoint.open(opts.model_dir)
    shard = ModelShard.of(ckpt.cfg, rank, world)
    group = join(rank, world, device, init_method)
    kernels = with_vocab_parallel_remask(select_kernels(opts.kernels, device), shard)
    model = load_model(ckpt, opts.torch_dtype, device, progress, opts.quantization, opts.quantize_head, opts.group_size,
                       kernels, shard)
    return Rank(model, Mirror(group, None if followers is None else followers.check_alive), followers)


def start(opts: LoadOptions, world: int, follower_main: Tuple[str, str], progress=None) -> Rank:
    """This process's rank of a `world`-rank group: rank 0 starting the others, or (under torchrun)
    whichever rank torchrun made it. follower_main: (module, function) the started ranks run, called
    with (rank, world, leader pid, init_method, opts.as_json())."""
    ModelShard.of(Checkpoint.open(opts.model_dir).cfg, 0, world)      # refuse a split that cannot work, first
    if launched_by_torchrun():
        if int(os.environ["WORLD_SIZE"]) != world:
            raise RuntimeError(f"tensor_parallel={world}, but torchrun started {os.environ['WORLD_SIZE']} ranks")
        return load_rank(opts, int(os.environ["RANK"]), world, None, progress=progress)
    init_method = f"tcp://127.0.0.1:{free_port()}"
    followers = Followers(follower_main, world, (init_method, opts.as_json()))
    try:
        return load_rank(opts, 0, world, init_method, followers, progress)
    except BaseException:
        followers.stop(timeout=1.0)
        raise
