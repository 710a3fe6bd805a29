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
from typing import List, Optional, Sequence, Tuple

import torch

from . import validate
from ..config import ModelConfig
from .loop import Block


@dataclass
class InfillOutput:
    sequences: torch.Tensor   # [B, L] int64: the input with every mask filled
    nfe: int                  # forward evaluations (denoising steps) used
    seed: int                 # seed of sequence 0 (sequence b uses seed + b)


@dataclass
class InfillPlan:
    canvas: torch.Tensor               # [B, L] int64, a copy of the input
    key_mask: Optional[torch.Tensor]   # [B, L] bool or None
    row_offset: torch.Tensor           # [B] left padding per sequence
    blocks: List[Block]
    steps_per_block: int


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


def plan(input_ids, attention_mask, cfg: ModelConfig, steps: Optional[int], block_length: Optional[int]) -> InfillPlan:
    """Check infill arguments; steps=None means one step per mask of the largest block."""
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
    key_mask = None if mask is None else mask.bool()
    row_offset = torch.zeros(ids.shape[0], dtype=torch.int64) if mask is None else (mask == 0).sum(1)
    return InfillPlan(ids.clone(), key_mask, row_offset, blocks, steps // len(blocks))


def encode_masked_texts(codec, texts: Sequence[str], mask_id: int, mask_marker: Optional[str],
                        pad_id: Optional[int]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Texts with mask markers -> left-padded ids [B, L] (one mask id per marker) and attention mask.

    The marker defaults to the tokenizer's own mask token string; a custom marker is
    replaced by that string before encoding, so the tokenizer sees its special token.
    """
    mask_text = codec.tokenizer.id_to_token(mask_id)
    if mask_text is None:
        raise ValueError(f"the tokenizer has no token for the mask id {mask_id}")
    marker = mask_text if mask_marker is None else mask_marker
    if not marker:
        raise ValueError("mask_marker must be a non-empty string")
    rows = []
    for text in texts:
        ids = codec.encode(text.replace(marker, mask_text) if marker != mask_text else text)
        if ids.count(mask_id) != text.count(marker):
            raise ValueError(f"{text!r}: {text.count(marker)} mask markers {marker!r} encode to "
                             f"{ids.count(mask_id)} mask tokens; the tokenizer must keep {mask_text!r} whole")
        rows.append(ids)
    width = max(len(r) for r in rows)
    if pad_id is None and any(len(r) != width for r in rows):
        raise ValueError("texts of different lengths need a pad_token_id or eos_token_id in config.json")
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], dtype=torch.int64)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.int64)
    return ids, (mask if bool((mask == 0).any()) else None)
