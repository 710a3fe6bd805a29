"""Argument checks for generation: every rule broken raises ValueError naming the rule."""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple

import torch

from ..config import ModelConfig

REMASKING = ("low_confidence", "random")


def as_token_batch(input_ids, name: str = "input_ids") -> torch.Tensor:
    """Accept a LongTensor [B, P] (or [P]) or nested lists; return int64 [B, P] on the CPU."""
    if not isinstance(input_ids, torch.Tensor):
        try:
            input_ids = torch.tensor(input_ids, dtype=torch.int64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be a 2-D tensor or list of equal-length token lists ({e})") from None
    if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{name} must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must have shape [batch, length], got {tuple(input_ids.shape)}")
    if input_ids.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch")
    if input_ids.shape[1] == 0:
        raise ValueError(f"{name}: the prompt is empty; give at least one token")
    return input_ids.to(device="cpu", dtype=torch.int64).contiguous()


def check_tokens(ids: torch.Tensor, cfg: ModelConfig, name: str = "input_ids", allow_mask: bool = False):
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= cfg.vocab_size:
        raise ValueError(f"{name}: token ids must lie in [0, {cfg.vocab_size}), found {lo if lo < 0 else hi}")
    if not allow_mask and bool((ids == cfg.mask_token_id).any()):
        b, i = (ids == cfg.mask_token_id).nonzero()[0].tolist()
        raise ValueError(f"{name}: the mask token id {cfg.mask_token_id} appears inside the prompt "
                         f"(row {b}, position {i}); prompts must not contain [MASK]")


def as_attention_mask(attention_mask, ids: torch.Tensor) -> Optional[torch.Tensor]:
    """None, or a {0,1} int64 [B, P] left-padding mask (zeros, then ones) with one real token per row."""
    if attention_mask is None:
        return None
    mask = torch.as_tensor(attention_mask).to("cpu")
    if mask.dtype == torch.bool:
        mask = mask.to(torch.int64)
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(f"attention_mask must be integer or bool, got dtype {mask.dtype}")
    if mask.dim() == 1:
        mask = mask[None]
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"attention_mask shape {tuple(mask.shape)} differs from input_ids shape {tuple(ids.shape)}")
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("attention_mask must contain only 0 and 1")
    mask = mask.to(torch.int64)
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError("attention_mask is not left padding: each row must be zeros followed by ones")
    if bool((mask[:, -1] == 0).any()):
        raise ValueError("attention_mask has a row with no real token; every prompt needs at least one")
    return mask.contiguous()


def check_schedule(prompt_len: int, gen_length: int, block_length: int, steps: int, cfg: ModelConfig) -> Tuple[int, int]:
    """Returns (num_blocks, steps_per_block)."""
    for name, v in (("gen_length", gen_length), ("block_length", block_length), ("steps", steps)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not divisible by block_length {block_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps {steps} is not divisible by the number of blocks {num_blocks} "
                         f"(gen_length {gen_length} / block_length {block_length})")
    total = prompt_len + gen_length
    if total > cfg.max_sequence_length:
        raise ValueError(f"prompt ({prompt_len}) + gen_length ({gen_length}) = {total} tokens exceeds "
                         f"max_sequence_length {cfg.max_sequence_length}")
    return num_blocks, steps // num_blocks


def check_sampling(temperature, cfg_scale, remasking, threshold):
    for name, value in (("temperature", temperature), ("cfg_scale", cfg_scale)):
        if not is_real(value) or not 0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not isinstance(remasking, str) or remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if threshold is not None and (not is_real(threshold) or not 0.0 < threshold <= 1.0):
        raise ValueError(f"threshold must be None or a number in (0, 1], got {threshold!r}")


def check_flag(value, name: str) -> bool:
    """A bool argument: "no", 0 or None would otherwise read as a choice they do not make."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def is_real(value) -> bool:
    """A real number (int, float, numpy scalar), not a bool nor a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def as_token_ids(value, name: str) -> List[int]:
    """A sequence of token ids (a list, tuple or 1-D integer tensor) as a list of ints; a string, a
    single number or a float is refused, never read digit by digit or rounded."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D integer tensor, got {tuple(value.shape)} {value.dtype}")
        return [int(t) for t in value.tolist()]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list of token ids, got {value!r:.60}")
    bad = [t for t in value if not isinstance(t, numbers.Integral) or isinstance(t, bool)]
    if bad:
        raise ValueError(f"{name} must hold integer token ids, got {bad[0]!r:.60}")
    return [int(t) for t in value]
