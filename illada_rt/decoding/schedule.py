"""Per-step transfer counts: how many masked tokens each denoising step unmasks, and how many
steps a block takes under them."""
from __future__ import annotations

import torch


def num_transfer_tokens(masked_count: torch.Tensor, steps: int) -> torch.Tensor:
    """masked_count [B] -> int64 [B, steps].

    LLaDA's linear schedule: each step unmasks masked_count // steps tokens, and
    the first masked_count % steps steps unmask one more.
    """
    masked_count = masked_count.to(torch.int64)
    base = (masked_count // steps)[:, None].expand(-1, steps)
    extra = torch.arange(steps, device=masked_count.device)[None, :] < (masked_count % steps)[:, None]
    return base + extra.to(torch.int64)


def steps_that_run(steps_per_block: int, block_masks: int) -> int:
    """The schedule length a block of at most block_masks masks needs: min(steps_per_block, block_masks).

    With more steps than masks, LLaDA's schedule transfers one token at each of the first
    `masks` steps and none after (num_transfer_tokens), so cutting it at block_masks steps
    changes no token (nor any RNG counter: those count forwards, and no forward runs past the
    last transfer). Plans keep the cut length, so nothing is ever sized by a `steps` argument
    beyond what can run (StepBuffers.k, the graph step's k_table, a serving row's schedule)."""
    return min(steps_per_block, block_masks)


def scheduled_steps(counts: torch.Tensor, schedule: torch.Tensor) -> int:
    """Steps the top-k rule takes on a block whose rows hold counts [B] masks, given the
    schedule [B, steps]: until every row is filled (a step transfers exactly its count)."""
    unfinished = schedule.cumsum(1) < counts[:, None]              # [B, steps] masks left after step i
    return int(bool((counts > 0).any())) + int(unfinished.any(0).sum())


def steps_per_full_block(block_length: int, steps_per_block: int) -> int:
    """Steps the top-k rule takes on a block of block_length masks (fewer than steps_per_block
    when the schedule has zero-transfer steps)."""
    counts = torch.full((1,), block_length, dtype=torch.int64)
    return scheduled_steps(counts, num_transfer_tokens(counts, steps_per_block))
