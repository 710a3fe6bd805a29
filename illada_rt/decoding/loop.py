"""The block-denoising loop, as a generator shared by generate, stream and infill.

Per block (a canvas span [lo, hi)) and per step: one forward (the whole canvas in the
exact mode; see cache.py for the KV-cached modes), the final norm and LM head over the
block's rows only, then the remask kernel picks tokens for the block's masked rows and
transfers the scheduled number (or every one at or above the threshold) in place.
A block may own only some of its span's masks (infilling): the others are hidden from
the kernel for the step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, NamedTuple, Optional, Sequence

import torch

from .. import ops
from .kv_cache import CACHE_MODES, BlockCache
from ..model import LLaDAModel
from .schedule import num_transfer_tokens


@dataclass
class DenoiseSettings:
    steps_per_block: int
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    threshold: Optional[float] = None
    stop_token_ids: Sequence[int] = ()   # early stop: a finished block holding one of these ends the answer
    fill_id: Optional[int] = None        # token written after the stop token (None: repeat the stop token)
    cache: Optional[str] = None          # None (exact), "prefix" or "dual"

    def __post_init__(self):
        if self.cache is not None and self.cache not in CACHE_MODES:
            raise ValueError(f"cache must be None or one of {CACHE_MODES}, got {self.cache!r}")
        if self.cache is not None and self.cfg_scale > 0:
            raise ValueError(f"cache={self.cache!r} does not support classifier-free guidance (as in Fast-dLLM); "
                             "use cfg_scale=0 or cache=None")


class Block(NamedTuple):
    lo: int                               # canvas span [lo, hi) holding the block's masks
    hi: int
    owns: Optional[torch.Tensor] = None   # [B, hi - lo] bool: the masks this block fills (None: all of them)


class Progress(NamedTuple):
    kind: str     # "step": a denoising step is done; "block": a block is finished
    block: int    # index of the block
    nfe: int      # forwards so far
    last: bool    # "block" events: no block follows (the final one, or every sequence stopped)


def answer_blocks(prompt_len: int, gen_length: int, block_length: int) -> List[Block]:
    """LLaDA's semi-autoregressive blocks: consecutive block_length spans of the answer."""
    return [Block(prompt_len + j, prompt_len + j + block_length) for j in range(0, gen_length, block_length)]


def _fill_after_stop(answer: torch.Tensor, upto: int, stop_ids: torch.Tensor, finished: torch.Tensor, fill_id):
    """Mark rows whose answer[:, :upto] holds a stop token finished; fill what follows it."""
    hit = torch.isin(answer[:, :upto], stop_ids)
    for b in torch.nonzero(hit.any(1) & ~finished).flatten().tolist():
        first = int(hit[b].nonzero()[0])
        answer[b, first + 1:] = answer[b, first] if fill_id is None else fill_id
        finished[b] = True


def _pending(span: torch.Tensor, owns: Optional[torch.Tensor], mask_id: int) -> torch.Tensor:
    """[B, Lb] bool: the masks of the span the block still has to fill."""
    return span == mask_id if owns is None else (span == mask_id) & owns


class StepBuffers:
    """What the steps of one generation share, on the canvas's device, allocated once.

    Every step reuses them, so a step allocates nothing beyond its forward pass.
    """

    def __init__(self, canvas: torch.Tensor, blocks: List[Block], s: DenoiseSettings):
        B, L = canvas.shape
        dev = canvas.device
        self.step = torch.zeros(B, dtype=torch.int64, device=dev)           # [B] forward index: RNG counter
        self.masks_left = torch.empty(B, dtype=torch.int64, device=dev)     # [B] block masks left after a step
        self.k = torch.empty(s.steps_per_block, B, dtype=torch.int64, device=dev)  # [steps, B] block schedule
        # CFG: [2B, L] the canvas, then the canvas with its prompt masked (the unconditional branch)
        self.pair = torch.empty(2 * B, L, dtype=torch.int64, device=dev) if s.cfg_scale > 0 else None
        # remask scratch, zeroed once; word 0 turns non-zero (sticky) on non-finite logits where the
        # remask does not raise at once (the CUDA kernel, the torch twin on any device)
        width = max(hi - lo for lo, hi, _ in blocks)
        self.workspace = ops.remask_workspace(B, width, dev)

    def check_finite(self, block: int):
        """Raise if a remask met non-finite logits (one 8-byte device read)."""
        if int(self.workspace[0]) != 0:
            raise RuntimeError(f"remask: logits contain NaN or infinity (the model produced non-finite values; "
                               f"detected at the end of block {block})")


def scheduled_steps(counts: torch.Tensor, schedule: torch.Tensor) -> int:
    """Steps the top-k rule takes on a block whose rows hold counts [B] masks, given the
    schedule [B, steps]: until every row is filled (a step transfers exactly its count)."""
    unfinished = schedule.cumsum(1) < counts[:, None]              # [B, steps] masks left after step i
    return int(bool((counts > 0).any())) + int(unfinished.any(0).sum())


@torch.no_grad()
def denoise_steps(model: LLaDAModel, canvas: torch.Tensor, key_mask: Optional[torch.Tensor], blocks: List[Block],
                  prompt_len: int, seeds: torch.Tensor, row_offset: torch.Tensor,
                  s: DenoiseSettings) -> Iterator[Progress]:
    """Fill the masks of canvas [B, L] block by block, in place, yielding after each step and block.

    Every tensor is on the model's device. prompt_len: where the answer starts (early stop
    looks at canvas[:, prompt_len:]). Loop control reads the device once per block (the
    block's mask counts, and the CUDA error word) and, with a threshold, once per step
    (masks_left); the top-k rule's step count follows from the schedule.
    """
    cfg = model.cfg
    B = canvas.shape[0]
    mask_id = cfg.mask_token_id
    hide_id = 0 if mask_id != 0 else 1  # stands in for masks a block does not own, during remask
    prompt_index = canvas != mask_id
    key_mask2 = None if key_mask is None else key_mask.repeat(2, 1)
    cache = None if s.cache is None else BlockCache(model, s.cache)
    buf = StepBuffers(canvas, blocks, s)
    finished = torch.zeros(B, dtype=torch.bool, device=canvas.device)
    stop_ids = torch.tensor(list(s.stop_token_ids), dtype=torch.int64, device=canvas.device)
    nfe = 0
    for blk, (lo, hi, owns) in enumerate(blocks):
        span = canvas[:, lo:hi]                                   # [B, Lb] view
        counts = _pending(span, owns, mask_id).sum(1).cpu()       # [B] masks this block fills
        # masks of the span owned by a later block: hidden from remask for the whole block
        hidden = None if owns is None else (span == mask_id) & ~owns
        if s.threshold is None:
            schedule = num_transfer_tokens(counts, s.steps_per_block)                      # [B, steps]
            buf.k.copy_(schedule.t())
            steps = scheduled_steps(counts, schedule)
        else:
            steps = int(counts.max())  # a bound: each step fills at least one mask of every unfilled row
        i = 0
        while i < steps and (i == 0 or s.threshold is None or any(buf.masks_left.tolist())):
            uncond = None
            if s.cfg_scale > 0:
                buf.pair[:B].copy_(canvas)
                buf.pair[B:].copy_(canvas).masked_fill_(prompt_index, mask_id)
                both = model.logits(buf.pair, key_mask2, slice(lo, hi))                     # [2B, Lb, E]
                cond, uncond = both[:B], both[B:]
            elif cache is not None:
                cond = cache.block_logits(canvas, key_mask, lo, hi, i)                        # [B, Lb, E]
            else:
                cond = model.logits(canvas, key_mask, slice(lo, hi))                          # [B, Lb, E]
            if hidden is not None:
                span.masked_fill_(hidden, hide_id)
            buf.step.fill_(nfe)
            model.kernels.remask_(cond, canvas, lo, vocab=cfg.vocab_size, mask_id=mask_id, seeds=seeds,
                                  row_offset=row_offset, step=buf.step, uncond=uncond, cfg_scale=s.cfg_scale,
                                  temperature=s.temperature, remasking=s.remasking,
                                  k=None if s.threshold is not None else buf.k[i],
                                  threshold=s.threshold, masks_left=buf.masks_left, workspace=buf.workspace)
            if hidden is not None:
                span.masked_fill_(hidden, mask_id)
            nfe += 1
            i += 1
            yield Progress("step", blk, nfe, False)
        buf.check_finite(blk)
        if len(stop_ids):
            _fill_after_stop(canvas[:, prompt_len:], hi - prompt_len, stop_ids, finished, s.fill_id)
        stop = len(stop_ids) > 0 and bool(finished.all())
        yield Progress("block", blk, nfe, stop or blk == len(blocks) - 1)
        if stop:
            break


def denoise(model: LLaDAModel, canvas: torch.Tensor, key_mask: Optional[torch.Tensor], blocks: List[Block],
            prompt_len: int, seeds: torch.Tensor, row_offset: torch.Tensor, s: DenoiseSettings) -> int:
    """Run denoise_steps to the end; returns the forward count."""
    nfe = 0
    for event in denoise_steps(model, canvas, key_mask, blocks, prompt_len, seeds, row_offset, s):
        nfe = event.nfe
    return nfe


def answer_lengths(answer: torch.Tensor, stop_token_ids: Sequence[int]) -> torch.Tensor:
    """[B] number of answer tokens before the first stop token (the whole answer if none)."""
    if not stop_token_ids:
        return torch.full((answer.shape[0],), answer.shape[1], dtype=torch.int64)
    hit = torch.isin(answer, torch.tensor(list(stop_token_ids), dtype=torch.int64, device=answer.device))
    first = torch.where(hit.any(1), hit.to(torch.int8).argmax(1), torch.tensor(answer.shape[1], device=answer.device))
    return first.to(torch.int64)
