"""The block-denoising loop: exact, KV-free (every step recomputes the whole sequence).

Per block [lo, hi) of the answer and per step: one forward over the whole canvas,
the final norm and LM head over the block's rows only, then the remask kernel picks
tokens for the block's masked rows and transfers the scheduled number (or every one
at or above the threshold) in place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from . import ops
from .model import LLaDAModel
from .schedule import num_transfer_tokens


@dataclass
class DenoiseSettings:
    gen_length: int
    block_length: int
    steps_per_block: int
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    threshold: Optional[float] = None
    stop_token_ids: Sequence[int] = ()   # early stop: a finished block holding one of these ends the answer
    fill_id: Optional[int] = None        # token written after the stop token (None: repeat the stop token)


def _fill_after_stop(answer: torch.Tensor, upto: int, stop_ids: torch.Tensor, finished: torch.Tensor, fill_id):
    """Mark rows whose answer[:, :upto] holds a stop token finished; fill what follows it."""
    hit = torch.isin(answer[:, :upto], stop_ids)
    for b in torch.nonzero(hit.any(1) & ~finished).flatten().tolist():
        first = int(hit[b].nonzero()[0])
        answer[b, first + 1:] = answer[b, first] if fill_id is None else fill_id
        finished[b] = True


@torch.no_grad()
def denoise(model: LLaDAModel, canvas: torch.Tensor, key_mask: Optional[torch.Tensor], prompt_len: int,
            seeds: torch.Tensor, row_offset: torch.Tensor, s: DenoiseSettings) -> int:
    """Fill the masked answer of canvas [B, P + gen_length] in place; returns the forward count."""
    cfg = model.cfg
    B = canvas.shape[0]
    mask_id = cfg.mask_token_id
    prompt_index = canvas != mask_id
    key_mask2 = None if key_mask is None else key_mask.repeat(2, 1)
    step = torch.zeros(B, dtype=torch.int64)
    masks_left = torch.empty(B, dtype=torch.int64)
    finished = torch.zeros(B, dtype=torch.bool)
    stop_ids = torch.tensor(list(s.stop_token_ids), dtype=torch.int64)
    nfe = 0
    for blk in range(s.gen_length // s.block_length):
        lo = prompt_len + blk * s.block_length
        hi = lo + s.block_length
        rows = slice(lo, hi)
        schedule = num_transfer_tokens((canvas[:, rows] == mask_id).sum(1), s.steps_per_block)
        i = 0
        while bool((canvas[:, rows] == mask_id).any()):
            if s.threshold is None and i >= s.steps_per_block:
                break
            if s.cfg_scale > 0:
                uncond_canvas = canvas.masked_fill(prompt_index, mask_id)
                both = model.logits(torch.cat([canvas, uncond_canvas]), key_mask2, rows)  # [2B, Lb, E]
                cond, uncond = both[:B], both[B:]
            else:
                cond, uncond = model.logits(canvas, key_mask, rows), None                  # [B, Lb, E]
            step.fill_(nfe)
            ops.remask_(cond, canvas, lo, vocab=cfg.vocab_size, mask_id=mask_id, seeds=seeds,
                        row_offset=row_offset, step=step, uncond=uncond, cfg_scale=s.cfg_scale,
                        temperature=s.temperature, remasking=s.remasking,
                        k=None if s.threshold is not None else schedule[:, i].contiguous(),
                        threshold=s.threshold, masks_left=masks_left)
            nfe += 1
            i += 1
        if len(stop_ids):
            _fill_after_stop(canvas[:, prompt_len:], hi - prompt_len, stop_ids, finished, s.fill_id)
            if bool(finished.all()):
                break
    return nfe


def answer_lengths(answer: torch.Tensor, stop_token_ids: Sequence[int]) -> torch.Tensor:
    """[B] number of answer tokens before the first stop token (the whole answer if none)."""
    if not stop_token_ids:
        return torch.full((answer.shape[0],), answer.shape[1], dtype=torch.int64)
    hit = torch.isin(answer, torch.tensor(list(stop_token_ids), dtype=torch.int64))
    first = torch.where(hit.any(1), hit.to(torch.int8).argmax(1), torch.tensor(answer.shape[1]))
    return first.to(torch.int64)
