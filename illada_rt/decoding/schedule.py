"""Per-step transfer counts: how many masked tokens each denoising step unmasks."""
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
