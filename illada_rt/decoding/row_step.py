"""One denoising step over rows that each denoise their own block: the serving row batcher's step.

Rows of one device batch may differ in prompt length, answer length, block length, steps and
seed, and each may be at a different block. The step left-pads the rows' canvases to a common
width, runs one forward over them, gathers every row's own block rows before the LM head, and
runs the step rule on those [rows, widest block] gathers. RoPE scores depend only on position
differences and padding is masked out of the keys, so a row computes what it would compute alone
(up to float rounding); the remask RNG counters are the row's own (its forward index and its
unpadded token positions), so it also draws the same noise.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List

import torch

from .. import ops
from ..model import LLaDAModel
from .padding import left_pad, pad_id
from .plan import DenoiseSettings
from .step import StepRule


@dataclass
class RowState:
    """What one row's step needs: its canvas (updated in place) and where it stands."""
    canvas: torch.Tensor         # [L] int64 on the model's device
    prompt_index: torch.Tensor   # [L] bool: the tokens given (CFG hides them)
    lo: int                      # the row's block span [lo, hi) on its canvas
    hi: int
    k: int                       # top-k: tokens to transfer this step (not read under the threshold rule)
    nfe: int                     # forwards the row took part in: its RNG step counter
    seed: int

    def on(self, device: torch.device) -> "RowState":
        """This row with its tensors on device (itself when they are there already)."""
        return replace(self, canvas=self.canvas.to(device), prompt_index=self.prompt_index.to(device))


@torch.no_grad()
def step_rows(model: LLaDAModel, rows: List[RowState], settings: DenoiseSettings) -> List[int]:
    """One step for every row (rows share the sampling settings); each canvas is updated in place.
    Returns the masks left in each row's block."""
    dev, n = model.device, len(rows)
    pad = pad_id(model.cfg)                                      # left padding, masked from the keys
    tokens, key_mask = left_pad([r.canvas for r in rows], pad, dev)                  # [n, W] left-padded
    width = tokens.shape[1]
    pads = [width - r.canvas.shape[0] for r in rows]
    key_mask = key_mask if any(pads) else None
    los = [pads[b] + r.lo for b, r in enumerate(rows)]                               # block starts in the batch
    lens = [r.hi - r.lo for r in rows]
    lo_all, hi_all = min(los), max(lo + ln for lo, ln in zip(los, lens))
    rule = StepRule.of(model, settings)
    widest = max(lens)
    # idx[b, j]: row b's j-th block row inside [lo_all, hi_all); columns past its block repeat its last row
    cols = torch.arange(widest, device=dev)[None, :]
    start = torch.tensor([lo - lo_all for lo in los], device=dev)[:, None]
    last = torch.tensor([ln - 1 for ln in lens], device=dev)[:, None]
    idx = (start + torch.minimum(cols, last))[..., None]                               # [n, widest, 1]
    prompt_index = None
    if rule.cfg:
        prompt_index = torch.zeros(n, width, dtype=torch.bool, device=dev)
        for b, r in enumerate(rows):
            prompt_index[b, pads[b]:] = r.prompt_index
    inputs = rule.model_input(tokens, prompt_index)                                     # [n or 2n, W]
    if key_mask is not None and inputs is not tokens:
        key_mask = key_mask.repeat(2, 1)                                                 # the CFG pair's
    # the final norm's rows of every row's span, then each row's own block rows through the
    # LM head: the head (E outputs a row) sees n * widest rows, not n * (hi_all - lo_all)
    hidden = model.hidden(inputs, key_mask, slice(lo_all, hi_all))                    # [n or 2n, R, d]
    idx = idx.repeat(inputs.shape[0] // n, 1, 1)
    logits = model.head_logits(torch.take_along_dim(hidden, idx, dim=1))               # [n or 2n, widest, E]
    block = torch.full((n, widest), pad, dtype=torch.int64, device=dev)               # [n, widest]
    for b, r in enumerate(rows):
        block[b, :r.hi - r.lo] = r.canvas[r.lo:r.hi]
    as_tensor = (lambda v: torch.tensor(v, dtype=torch.int64, device=dev))            # noqa: E731
    masks_left = torch.empty(n, dtype=torch.int64, device=dev)
    workspace = ops.remask_workspace(n, widest, dev)      # word 0: the non-finite flag
    # block_start 0 on the gathered block: row b's token j sits at its own position lo_b + j,
    # which row_offset = -lo_b restores for the RNG counters
    rule.transfer(logits, block, 0, seeds=as_tensor([r.seed for r in rows]),
                  row_offset=as_tensor([-r.lo for r in rows]), step=as_tensor([r.nfe for r in rows]),
                  k=None if settings.threshold is not None else as_tensor([r.k for r in rows]),
                  masks_left=masks_left, workspace=workspace)
    rule.check_finite(workspace, "in a serving step")
    for b, r in enumerate(rows):
        r.canvas[r.lo:r.hi] = block[b, :r.hi - r.lo]
    return masks_left.tolist()
