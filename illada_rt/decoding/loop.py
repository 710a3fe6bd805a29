"""The eager block-denoising loop, as a generator shared by generate, stream, infill and cohorts.

Per block (a canvas span [lo, hi)) and per step: one forward (the whole canvas in the exact mode;
see kv_cache.py for the cached modes), the final norm and LM head over the block's rows only,
then the step rule (step.py) picks tokens for the block's masked rows and transfers the
scheduled number (or every one at or above the threshold) in place. A block may own only some
of its span's masks (infilling): the others are hidden from the rule for the step.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import torch

from .. import ops
from ..model import LLaDAModel
from .kv_cache import BlockKVCache
from .plan import GenerationPlan
from .schedule import num_transfer_tokens, scheduled_steps
from .step import StepRule


class Progress(NamedTuple):
    kind: str     # "step": a denoising step is done; "block": a block is finished
    block: int    # index of the block
    nfe: int      # forwards so far
    last: bool    # "block" events: no block follows (the final one, or every sequence stopped)


class StepBuffers:
    """What the steps of one generation share, on the canvas's device, allocated once.

    Every step reuses them, so a step allocates nothing beyond its forward pass.
    """

    def __init__(self, plan: GenerationPlan):
        B, L = plan.canvas.shape
        dev, s = plan.canvas.device, plan.settings
        self.step = torch.zeros(B, dtype=torch.int64, device=dev)           # [B] forward index: RNG counter
        self.masks_left = torch.empty(B, dtype=torch.int64, device=dev)     # [B] block masks left after a step
        self.k = torch.empty(s.steps_per_block, B, dtype=torch.int64, device=dev)  # [steps, B] block schedule
        self.pair = torch.empty(2 * B, L, dtype=torch.int64, device=dev) if s.cfg_scale > 0 else None  # CFG pair
        # remask scratch, zeroed once; word 0 turns non-zero (sticky) on non-finite logits where the
        # remask does not raise at once (the CUDA kernel, the torch twin on any device)
        width = max(hi - lo for lo, hi, _ in plan.blocks)
        self.workspace = ops.remask_workspace(B, width, dev)


@torch.no_grad()
def denoise_steps(model: LLaDAModel, plan: GenerationPlan) -> Iterator[Progress]:
    """Fill the masks of plan.canvas [B, L] block by block, in place, yielding after each step and block.

    Loop control reads the device once per block (the block's mask counts, and the non-finite
    flag) and, with a threshold, once per step (masks_left); the top-k rule's step count follows
    from the schedule.
    """
    s, canvas = plan.settings, plan.canvas
    rule = StepRule.of(model, s)
    mask_id = rule.mask_id
    hide_id = 0 if mask_id != 0 else 1  # stands in for masks a block does not own, during remask
    prompt_index = canvas != mask_id
    key_mask2 = None if plan.key_mask is None or not rule.cfg else plan.key_mask.repeat(2, 1)
    cache = None if s.cache is None else BlockKVCache(model, s.cache)
    buf = StepBuffers(plan)
    finished = torch.zeros(canvas.shape[0], dtype=torch.bool, device=canvas.device)
    nfe = 0
    for blk, (lo, hi, owns) in enumerate(plan.blocks):
        span = canvas[:, lo:hi]                                   # [B, Lb] view
        pending = span == mask_id if owns is None else (span == mask_id) & owns
        counts = pending.sum(1).cpu()                             # [B] masks this block fills
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
            if cache is not None:
                logits = cache.block_logits(canvas, plan.key_mask, lo, hi, i)             # [B, Lb, E]
            else:
                tokens = rule.model_input(canvas, prompt_index, out=buf.pair)             # [B or 2B, L]
                logits = model.logits(tokens, plan.key_mask if tokens is canvas else key_mask2, slice(lo, hi))
            if hidden is not None:
                span.masked_fill_(hidden, hide_id)
            buf.step.fill_(nfe)
            rule.transfer(logits, canvas, lo, seeds=plan.seeds, row_offset=plan.row_offset, step=buf.step,
                          k=buf.k[i] if s.threshold is None else None, masks_left=buf.masks_left,
                          workspace=buf.workspace)
            if hidden is not None:
                span.masked_fill_(hidden, mask_id)
            nfe += 1
            i += 1
            yield Progress("step", blk, nfe, False)
        stop = rule.end_block(canvas[:, plan.prompt_len:], hi - plan.prompt_len, finished, buf.workspace,
                              f"at the end of block {blk}")
        yield Progress("block", blk, nfe, stop or blk == len(plan.blocks) - 1)
        if stop:
            break


def denoise(model: LLaDAModel, plan: GenerationPlan) -> int:
    """Run denoise_steps to the end; returns the forward count."""
    nfe = 0
    for event in denoise_steps(model, plan):
        nfe = event.nfe
    return nfe
