"""Continuous batching of generation requests: each row denoises its own block.

A Row is a request's progress (its canvas, its block, its step in the block, its schedule); the
RowBatcher steps a changing set of them, each on its own block, in one device batch: the step
is decoding/row_step.py's (see there why a row computes what it would alone).
"""
from __future__ import annotations

from typing import List

import torch

from ..decoding.row_step import RowState
from ..decoding.schedule import num_transfer_tokens, scheduled_steps
from ..decoding.step import fill_after_stop
from .protocol import ServingEngine
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
    """Runs denoising steps over a changing set of Rows on one engine (the step itself:
    decoding/row_step.py, through the engine, so that every tensor-parallel rank runs it)."""

    def __init__(self, engine: ServingEngine):
        self.engine = engine
        self.forwards = 0

    def step(self, rows: List[Row]) -> List[int]:
        """One denoising step for every row (each on its current block). Returns masks left [rows]."""
        s = rows[0].request.settings                          # the rows share their sampling settings
        k = [0 if s.threshold is not None else r.schedule[r.step_in_block] for r in rows]   # top-k only
        states = [RowState(r.canvas, r.prompt_index, *r.span, k_b, r.nfe, r.request.seed) for r, k_b in zip(rows, k)]
        masks_left = self.engine.step_rows(states, s)
        self.forwards += 1
        for r in rows:
            r.nfe += 1
            r.step_in_block += 1
        return masks_left
