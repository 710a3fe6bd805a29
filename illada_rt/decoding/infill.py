"""Infilling: denoise the masked positions of a sequence wherever they are, keep the rest.

Schedule (our choice; LLaDA's generate() only fills a suffix): each sequence's masked
positions, in left-to-right order, are cut into blocks of block_length masks (the
masks of rank [j * block_length, (j + 1) * block_length) form block j; block_length=None
puts all masks in one block). Blocks are filled one after the other, steps are split
evenly over them (steps_per_block = steps / num_blocks) and each block uses LLaDA's
per-step transfer counts, or the threshold rule, like a generation block. Sequences
of a batch with fewer masks have empty final blocks. Random numbers are keyed like
generate()'s: sequence b uses seed + b at its token positions and the forward index.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from ..config import ModelConfig
from . import validate
from .plan import Block, DenoiseSettings, GenerationPlan, on_device, resolve_seed
from .schedule import steps_that_run


@dataclass
class InfillOutput:
    sequences: torch.Tensor   # [B, L] int64: the input with every mask filled
    nfe: int                  # forward evaluations (denoising steps) used
    seed: int                 # seed of sequence 0 (sequence b uses seed + b)


def mask_blocks(to_fill: torch.Tensor, block_length: int) -> List[Block]:
    """to_fill [B, L] bool -> blocks of block_length masks per sequence, left to right.

    Block j owns the masks of rank j*block_length .. (j+1)*block_length - 1 of each sequence;
    its span [lo, hi) is the narrowest one covering them in every sequence.
    """
    rank = to_fill.cumsum(1) - 1                          # [B, L] rank of each mask in its sequence
    num_blocks = -(-int(to_fill.sum(1).max()) // block_length)
    blocks = []
    for j in range(num_blocks):
        owns = to_fill & (rank // block_length == j)      # [B, L]
        cols = owns.any(0).nonzero().flatten()
        lo, hi = int(cols[0]), int(cols[-1]) + 1
        blocks.append(Block(lo, hi, owns[:, lo:hi].contiguous()))
    return blocks


def plan_infill(cfg: ModelConfig, device: torch.device, input_ids, attention_mask, steps: Optional[int] = None,
                block_length: Optional[int] = None, temperature: float = 0.0, remasking: str = "low_confidence",
                threshold: Optional[float] = None, seed: Optional[int] = None) -> GenerationPlan:
    """Check infill()'s arguments and plan the filling of every mask of input_ids [B, L] (see
    infill.py for the schedule); steps=None means one step per mask of the largest block."""
    ids = validate.as_token_batch(input_ids)
    validate.check_tokens(ids, cfg, allow_mask=True)
    if ids.shape[1] > cfg.max_sequence_length:
        raise ValueError(f"input length {ids.shape[1]} exceeds max_sequence_length {cfg.max_sequence_length}")
    mask = validate.as_attention_mask(attention_mask, ids)
    to_fill = ids == cfg.mask_token_id
    if mask is not None and bool((to_fill & (mask == 0)).any()):
        raise ValueError("input_ids: the mask token appears inside the left padding (attention_mask 0)")
    counts = to_fill.sum(1)
    if bool((counts == 0).any()):
        b = int((counts == 0).nonzero()[0])
        raise ValueError(f"input_ids: row {b} holds no mask token (id {cfg.mask_token_id}); "
                         "infilling needs at least one masked position per sequence")
    if block_length is None:
        block_length = int(counts.max())
    if not isinstance(block_length, int) or isinstance(block_length, bool) or block_length <= 0:
        raise ValueError(f"block_length must be a positive integer or None, got {block_length!r}")
    blocks = mask_blocks(to_fill, block_length)
    if steps is None:
        steps = len(blocks) * min(block_length, int(counts.max()))
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if steps % len(blocks):
        raise ValueError(f"steps {steps} is not divisible by the number of blocks {len(blocks)} "
                         f"(up to {int(counts.max())} masks / block_length {block_length})")
    validate.check_sampling(temperature, 0.0, remasking, threshold)
    seed = resolve_seed(seed)
    settings = DenoiseSettings(steps_per_block=steps_that_run(steps // len(blocks), block_length),
                               temperature=float(temperature), remasking=remasking,
                               threshold=None if threshold is None else float(threshold))
    key_mask = None if mask is None else mask.bool()
    row_offset = torch.zeros(ids.shape[0], dtype=torch.int64) if mask is None else (mask == 0).sum(1)
    seeds = torch.arange(ids.shape[0], dtype=torch.int64) + seed
    dev = on_device(device)
    return GenerationPlan(dev(ids.clone()), dev(key_mask), 0, 0, [Block(lo, hi, dev(owns)) for lo, hi, owns in blocks],
                          dev(seeds), dev(row_offset), settings, [], seed)
