"""One pad rule and one left-pad helper for every batch of unequal sequences.

Padding sits on the left and is masked out of the keys (attention mask 0), so its token never
changes a result; pad_id picks one that is a real token and not [MASK] (a pad must not be
mistaken for a position to fill): the config's pad_token_id, else its eos_token_id, else 0 or 1.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

from ..config import ModelConfig

Tokens = Union[Sequence[int], torch.Tensor]


def pad_id(cfg: ModelConfig) -> int:
    """The token that fills left padding (see the module docstring)."""
    return next(t for t in (cfg.pad_token_id, cfg.eos_token_id, 0, 1) if t is not None and t != cfg.mask_token_id)


def left_pad(rows: Sequence[Tokens], pad: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sequences of token ids (lists or 1-D tensors) -> (ids [B, W] int64, mask [B, W] bool) with
    each row right-aligned: W the longest length, pad to its left, mask False there."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.int64, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for b, r in enumerate(rows):
        n = len(r)
        ids[b, width - n:] = torch.as_tensor(r, dtype=torch.int64) if not isinstance(r, torch.Tensor) else r
        mask[b, width - n:] = True
    return ids, mask
