"""Block KV caches (Fast-dLLM's prefix and dual caches): cheaper steps inside a block.

Both approximate the exact mode, in which every step recomputes the whole canvas.
At a block's first step one full forward over the canvas [0, L) fills the cache
(per layer K and V after RoPE, KV heads only: [B, L, Hkv, hd]); its block logits drive
that step's transfer exactly as an exact-mode step. The block's later steps recompute
only some rows, whose fresh K/V overwrite their cache entries:

    prefix: rows [lo, L), the block and everything after it (Fast-dLLM feeds x[:, lo:]
            with the prefix cache and drops the suffix's cached K/V): the prefix [0, lo)
            is read from the cache, the block and suffix are recomputed every step.
    dual:   rows [lo, hi), the block alone: prefix and suffix are read from the cache.

Cached entries are as old as the block's first step, hence the approximation.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..model import KVCache, LLaDAModel
from .plan import CACHE_MODES


class BlockKVCache:
    """The cache of one generation; `block_logits` replaces the exact step's forward."""

    def __init__(self, model: LLaDAModel, mode: str):
        assert mode in CACHE_MODES, mode  # checked by DenoiseSettings
        self.model, self.mode = model, mode
        self.kv: Optional[KVCache] = None

    def block_logits(self, canvas: torch.Tensor, key_mask: Optional[torch.Tensor], lo: int, hi: int,
                     step_in_block: int) -> torch.Tensor:
        """Logits [B, hi - lo, E] of the block rows of canvas [B, L] at this step of the block."""
        rows = slice(lo, hi)
        if step_in_block == 0:
            logits, self.kv = self.model.prefill(canvas, key_mask, rows, self.kv)
            return logits
        end = canvas.shape[1] if self.mode == "prefix" else hi
        return self.model.block_step(canvas[:, lo:end], self.kv, lo, key_mask, rows)
