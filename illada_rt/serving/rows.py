"""Continuous batching of generation requests: each row denoises its own block.

Rows of one device batch may differ in prompt length, answer length, block length, steps
and seed, and each may be at a different block. A step left-pads the rows' canvases to a
common width, runs one forward over them, gathers every row's own block rows, and runs
the remask kernel on those [rows, widest block] gathers. RoPE scores depend only on
position differences and padding is masked out of the keys, so a row computes what it
would compute alone (up to float rounding); the remask RNG counters are the row's own
(its forward index and its unpadded token positions), so it also draws the same noise.
"""
from __future__ import annotations

from typing import List

import torch

from .. import ops
from ..decoding.padding import left_pad, pad_id
from ..decoding.schedule import num_transfer_tokens, scheduled_steps
from ..decoding.step import StepRule, fill_after_stop
from ..model import LLaDAModel
from ..model.linear import linear
from .requests import RowRequest


class Row:
    """A request's progress: its canvas, its block, its step inside the block."""

    def __init__(self, request: RowRequest, mask_id: int):
        self.request = request
        self.mask_id = mask_id
        self.canvas = request.canvas                       # [L] int64 on the device, updated in place
        self.prompt_index = self.canvas != mask_id         # [L] bool: the tokens given (CFG hides them)
        self.block = -1                                    # index into request.blocks
        self.nfe = 0                                       # forwards this row took part in: its RNG step counter
        self.emitted = 0                                   # answer tokens already sent in block events
        self.stop_ids = torch.tensor(list(request.settings.stop_token_ids), dtype=torch.int64,
                                     device=self.canvas.device)
        self.finished_by_stop = False
        self.step_in_block = 0
        self.steps_in_block = 0
        self.schedule: List[int] = []                      # top-k: tokens to transfer at each step of the block

    @property
    def length(self) -> int:
        return self.canvas.shape[0]

    @property
    def span(self):
        lo, hi, _ = self.request.blocks[self.block]
        return lo, hi

    @property
    def last_block(self) -> bool:
        return self.block == len(self.request.blocks) - 1

    def begin_block(self):
        """Enter the next block: its masks are counted with one device read, as the eager loop does."""
        self.block += 1
        self.step_in_block = 0
        lo, hi = self.span
        count = int((self.canvas[lo:hi] == self.mask_id).sum())
        s = self.request.settings
        if s.threshold is None:
            schedule = num_transfer_tokens(torch.tensor([count]), s.steps_per_block)     # [1, steps]
            self.schedule = schedule[0].tolist()
            self.steps_in_block = scheduled_steps(torch.tensor([count]), schedule)
        else:
            self.steps_in_block = count   # a bound: every threshold step fills at least one mask

    def block_done(self, masks_left: int) -> bool:
        """After a step: the block's schedule ran out, or no mask is left in it."""
        return self.step_in_block >= self.steps_in_block or masks_left == 0

    def finish_block(self) -> bool:
        """Apply early stop to the finished block; True when the request is complete."""
        req = self.request
        if len(self.stop_ids):
            _, hi = self.span
            finished = torch.zeros(1, dtype=torch.bool, device=self.canvas.device)
            fill_after_stop(self.canvas[None, req.prompt_len:], hi - req.prompt_len, self.stop_ids, finished,
                            req.settings.fill_id)
            self.finished_by_stop = bool(finished[0])
        return self.finished_by_stop or self.last_block


class RowBatcher:
    """Runs denoising steps over a changing set of Rows on one model."""

    def __init__(self, model: LLaDAModel):
        self.model = model
        cfg = model.cfg
        self.mask_id = cfg.mask_token_id
        self.pad_id = pad_id(cfg)                              # left padding (masked from keys)
        self.hide_id = self.pad_id                             # fills gathered columns past a row's block
        self.forwards = 0

    def step(self, rows: List[Row]) -> List[int]:
        """One denoising step for every row (each on its current block). Returns masks left [rows]."""
        model, dev = self.model, self.model.device
        n = len(rows)
        tokens, key_mask = left_pad([r.canvas for r in rows], self.pad_id, dev)        # [n, W] left-padded
        width = tokens.shape[1]
        pads = [width - r.length for r in rows]
        key_mask = key_mask if any(pads) else None
        los = [pads[b] + r.span[0] for b, r in enumerate(rows)]                       # block starts in the batch
        lens = [r.span[1] - r.span[0] for r in rows]
        lo_all, hi_all = min(los), max(lo + ln for lo, ln in zip(los, lens))
        rule = StepRule.of(model, rows[0].request.settings)       # the rows share their sampling settings
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
        logits = linear(model.kernels, torch.take_along_dim(hidden, idx, dim=1), model.head)   # [n or 2n, widest, E]
        self.forwards += 1
        block = torch.full((n, widest), self.hide_id, dtype=torch.int64, device=dev)      # [n, widest]
        for b, r in enumerate(rows):
            lo, hi = r.span
            block[b, :hi - lo] = r.canvas[lo:hi]
        as_tensor = (lambda v: torch.tensor(v, dtype=torch.int64, device=dev))
        masks_left = torch.empty(n, dtype=torch.int64, device=dev)
        k = None if rule.settings.threshold is not None else as_tensor([r.schedule[r.step_in_block] for r in rows])
        workspace = ops.remask_workspace(n, widest, dev)      # word 0: the non-finite flag
        # block_start 0 on the gathered block: row b's token j sits at its own position lo_b + j,
        # which row_offset = -lo_b restores for the RNG counters
        rule.transfer(logits, block, 0, seeds=as_tensor([r.request.seed for r in rows]),
                      row_offset=as_tensor([-r.span[0] for r in rows]), step=as_tensor([r.nfe for r in rows]),
                      k=k, masks_left=masks_left, workspace=workspace)
        rule.check_finite(workspace, "in a serving step")
        for b, r in enumerate(rows):
            lo, hi = r.span
            r.canvas[lo:hi] = block[b, :hi - lo]
            r.nfe += 1
            r.step_in_block += 1
        return masks_left.tolist()
