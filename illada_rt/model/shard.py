"""A tensor-parallel rank's share of the model (Megatron style) and the collective it needs.

    world N ranks; rank r holds
      attention   KV heads [r Hkv/N, (r+1) Hkv/N) and their query heads [r H/N, (r+1) H/N):
                  q/k/v rows of those heads, attn_out columns of those heads
      FFN         SwiGLU columns [r F/N, (r+1) F/N): gate/up rows, ff_out columns
      vocabulary  embedding (and LM head) rows [r ceil(E/N), ...), the last rank the remainder
      norms       whole (replicated)
    and sums partial results across ranks: after the attention output projection and after the
    FFN down projection (one all-reduce each per layer), and after the vocab-parallel embedding.
The LM head yields each rank's vocabulary slice of the logits; the remask combines the slices
row by row (parallel/remask.py), never gathering them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist

from ..config import PREFIX, ConfigError, ModelConfig
from ..quant.formats import QuantizedWeight
from .weights import Matrix

# torch >= 2.12 names it all_gather_single; older torch (2.11 on the GPU machines) all_gather_into_tensor
_gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

Split = Tuple[int, int, int]   # (dim, start, stop) of a public [N, K] weight: 0 splits outputs, 1 inputs


@dataclass(frozen=True)
class ModelShard:
    rank: int
    world: int
    group: Any             # torch.distributed process group of the tensor-parallel ranks (None: default)
    heads: int             # query heads held
    kv_heads: int          # KV heads held
    ffn: int               # SwiGLU columns held
    vocab_start: int       # first embedding / head row held
    vocab_rows: int        # embedding / head rows held (the last rank may hold fewer)
    vocab_per_rank: int    # ceil(E / N): every rank's slice width but maybe the last one's
    head_dim: int

    @classmethod
    def of(cls, cfg: ModelConfig, rank: int, world: int, group: Any = None) -> "ModelShard":
        """Rank `rank` of `world`; ConfigError where the model does not split that way."""
        if not isinstance(world, int) or isinstance(world, bool) or world < 1:
            raise ValueError(f"tensor_parallel must be a positive integer, got {world!r}")
        if cfg.n_kv_heads % world:
            raise ConfigError(f"tensor_parallel={world} must divide the KV heads (n_kv_heads {cfg.n_kv_heads}): "
                              f"attention splits by KV-head groups; use one of "
                              f"{[n for n in range(1, cfg.n_kv_heads + 1) if cfg.n_kv_heads % n == 0]}")
        if cfg.mlp_hidden_size % world:
            raise ConfigError(f"tensor_parallel={world} must divide mlp_hidden_size {cfg.mlp_hidden_size}")
        if cfg.embedding_size < world:
            raise ConfigError(f"tensor_parallel={world} exceeds the vocabulary rows ({cfg.embedding_size})")
        per = -(-cfg.embedding_size // world)
        start = min(rank * per, cfg.embedding_size)
        return cls(rank, world, group, cfg.n_heads // world, cfg.n_kv_heads // world, cfg.mlp_hidden_size // world,
                   start, min(cfg.embedding_size, start + per) - start, per, cfg.head_dim)

    # ------------------------------------------------------------ which slice of each weight

    def split(self, name: str) -> Optional[Split]:
        """The slice of the public weight `name` this rank holds, None for all of it (norms)."""
        r = self.rank
        if name in (PREFIX + "wte.weight", PREFIX + "ff_out.weight"):               # embedding, LM head
            return 0, self.vocab_start, self.vocab_start + self.vocab_rows
        leaf = name.rsplit(".", 2)[-2] if name.startswith(PREFIX + "blocks.") else None
        q, kv, f = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.ffn
        return {"q_proj": (0, r * q, (r + 1) * q), "k_proj": (0, r * kv, (r + 1) * kv),
                "v_proj": (0, r * kv, (r + 1) * kv), "attn_out": (1, r * q, (r + 1) * q),
                "ff_proj": (0, r * f, (r + 1) * f), "up_proj": (0, r * f, (r + 1) * f),
                "ff_out": (1, r * f, (r + 1) * f)}.get(leaf)

    def index(self, name: str) -> Optional[Tuple[slice, ...]]:
        """The index of the rank's slice of a dense tensor `name` (None: all of it)."""
        sp = self.split(name)
        if sp is None:
            return None
        dim, a, b = sp
        return (slice(a, b),) if dim == 0 else (slice(None), slice(a, b))

    def part_index(self, name: str, part: str, fmt: str, group_size: int) -> Optional[Tuple[slice, ...]]:
        """The index of the rank's slice of one stored part (qweight, scale, zero) of the quantized
        weight `name` (quant/formats.py): rows split alike; an input split takes int4's packed
        columns (two codes a byte) and group columns, and leaves per-row scales whole."""
        sp = self.split(name)
        if sp is None:
            return None
        dim, a, b = sp
        if dim == 0:
            return (slice(a, b),)
        if fmt == "int4":
            if a % group_size or b % group_size:
                raise ConfigError(f"tensor_parallel={self.world}: {name}'s input slice [{a}, {b}) is not whole int4 "
                                  f"groups of {group_size}; use a group_size dividing {b - a}")
            return (slice(None), slice(a // 2, b // 2)) if part == "qweight" else \
                (slice(None), slice(a // group_size, b // group_size))
        return (slice(None), slice(a, b)) if part == "qweight" else None

    def slice_weight(self, name: str, w: Matrix) -> Matrix:
        """The rank's slice of a whole weight (dense, or quantized whole and sliced here: the same
        codes and scales a single process holds)."""
        if not isinstance(w, QuantizedWeight):
            index = self.index(name)
            return w if index is None else w[index].contiguous()
        parts = {p: t for p, t in w.parts()}
        for p in parts:
            index = self.part_index(name, p, w.format, w.group_size)
            if index is not None:
                parts[p] = parts[p][index].contiguous()
        return QuantizedWeight(w.format, parts["qweight"], parts["scale"], parts.get("zero"), w.group_size)

    @property
    def vocab(self) -> slice:
        return slice(self.vocab_start, self.vocab_start + self.vocab_rows)

    def all_reduce(self, x: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """x summed (or op-reduced) over the ranks, in place."""
        dist.all_reduce(x, op=op, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """[world, *x.shape]: every rank's x (equal shapes on every rank)."""
        x = x.contiguous().view(1, *x.shape)                          # gathered along a new first dim
        out = torch.empty((self.world, *x.shape[1:]), dtype=x.dtype, device=x.device)
        _gather_into(out, x, group=self.group)
        return out
