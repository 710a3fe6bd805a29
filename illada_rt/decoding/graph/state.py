"""One denoising step made only of device operations: what a CUDA graph captures and replays.

The eager loop (loop.py) passes python values that change every step (block span, the
step's transfer counts, the RNG step) and reads the device to decide how many steps to run.
Here every such value lives in a device buffer of `StepState`, and the step advances them
itself, so one captured step serves every step of every block:

    prologue  rows = block_start + arange(Lb); block = canvas[:, rows]; active = any mask in block
              (top-k rule) at a block's first step, k_table = schedule of the block's mask counts;
              k = k_table[:, step_in_block]
    body      logits of the block rows (model.logits with an index tensor), remask on the block
              copy (block_start 0, row_offset - block_start: the RNG positions of the canvas), and
              the block copied back into the canvas
    epilogue  nfe += active; a block without masks left moves block_start on by Lb (clamped to
              the last block) and resets step_in_block; blocks_done counts such moves

A step on a block without masks changes nothing but block_start/blocks_done (remask transfers
nothing and nfe, the RNG counter, does not move), so surplus replays are exact no-ops. The step
never reads the device from the host, allocates only temporaries of fixed shapes, and runs
eagerly on any device: on the CPU it is tested against the eager loop token for token.
"""
from __future__ import annotations

import torch

from ... import ops
from ...model import LLaDAModel
from ..plan import DenoiseSettings, GenerationPlan
from ..schedule import num_transfer_tokens
from ..step import StepRule


def graph_key(plan: GenerationPlan) -> tuple:
    """What a captured step depends on: shapes, and the settings baked into its kernels."""
    (batch, length), s = plan.canvas.shape, plan.settings
    return (batch, length, plan.block_length, plan.key_mask is not None, s.steps_per_block, s.temperature,
            s.cfg_scale, s.remasking, s.threshold)


class StepState:
    """The static buffers of one (batch, length, block length, settings) step, on the model's device.

    Sized once; `load` fills them for a generation and every step reads and advances them in place.
    """

    def __init__(self, model: LLaDAModel, batch: int, length: int, block_length: int, padded: bool,
                 s: DenoiseSettings):
        if s.cache is not None:
            raise ValueError("the graph step computes the exact mode only (cache=None)")
        B, L, Lb, dev = batch, length, block_length, model.device
        i64 = dict(dtype=torch.int64, device=dev)
        self.model, self.settings, self.rule = model, s, StepRule.of(model, s)
        self.batch, self.length, self.block_length = B, L, Lb
        self.mask_id = model.cfg.mask_token_id
        self.last_start = L - Lb                                  # block_start never passes the last block
        self.canvas = torch.empty(B, L, **i64)                    # [B, L] the generation's tokens
        self.key_mask = torch.empty(B, L, dtype=torch.bool, device=dev) if padded else None
        cfg = s.cfg_scale > 0
        self.pair = torch.empty(2 * B, L, **i64) if cfg else None   # CFG: canvas, then canvas with prompt masked
        self.prompt_index = torch.empty(B, L, dtype=torch.bool, device=dev) if cfg else None
        self.key_mask2 = torch.empty(2 * B, L, dtype=torch.bool, device=dev) if cfg and padded else None
        self.seeds = torch.empty(B, **i64)
        self.row_offset = torch.empty(B, **i64)                   # [B] left padding
        self.row_offset_block = torch.empty(B, **i64)             # [B] row_offset - block_start
        self.block_start = torch.zeros((), **i64)                 # canvas position of the current block
        self.step_in_block = torch.zeros((), **i64)               # steps taken in the current block
        self.blocks_done = torch.zeros((), **i64)                 # blocks finished (counts on past the end)
        self.nfe = torch.zeros(B, **i64)                          # [B] forwards so far: the RNG step counter
        self.arange_block = torch.arange(Lb, **i64)
        self.rows = torch.empty(Lb, **i64)                        # [Lb] canvas positions of the block
        self.block = torch.empty(B, Lb, **i64)                    # [B, Lb] the block's tokens (remask works here)
        self.active = torch.zeros((), dtype=torch.bool, device=dev)  # the block holds masks: the step is real
        topk = s.threshold is None
        self.k_table = torch.zeros(B, s.steps_per_block, **i64) if topk else None  # [B, steps] block schedule
        self.k = torch.zeros(B, **i64) if topk else None          # [B] this step's transfer counts
        self.masks_left = torch.zeros(B, **i64)                   # [B] block masks left after the step
        self.workspace = ops.remask_workspace(B, Lb, dev)          # word 0: the sticky non-finite flag

    @classmethod
    def for_plan(cls, model: LLaDAModel, plan: GenerationPlan) -> "StepState":
        """The state of the plan's shapes and settings (not loaded)."""
        B, L = plan.canvas.shape
        return cls(model, B, L, plan.block_length, plan.key_mask is not None, plan.settings)

    def load(self, plan: GenerationPlan):
        """Start a generation: copy the plan's inputs (device tensors of this state's shapes) in
        and reset the counters. Device work only, no host read."""
        self.canvas.copy_(plan.canvas)
        if self.key_mask is not None:
            self.key_mask.copy_(plan.key_mask)
        if self.prompt_index is not None:
            torch.ne(plan.canvas, self.mask_id, out=self.prompt_index)
            if self.key_mask2 is not None:
                self.key_mask2.copy_(plan.key_mask.repeat(2, 1))
        self.seeds.copy_(plan.seeds)
        self.row_offset.copy_(plan.row_offset)
        self.block_start.fill_(plan.prompt_len)
        for t in (self.step_in_block, self.blocks_done, self.nfe, self.masks_left):
            t.zero_()
        if self.k_table is not None:
            self.k_table.zero_()
        self.workspace.zero_()


def step_prologue(st: StepState):
    """Locate the block, gather its tokens, decide whether the step is real, pick k."""
    torch.add(st.arange_block, st.block_start, out=st.rows)
    torch.index_select(st.canvas, 1, st.rows, out=st.block)
    counts = (st.block == st.mask_id).sum(1)                      # [B] masks in the block now
    torch.gt(counts.amax(), 0, out=st.active)
    if st.k_table is not None:
        # at the block's first step its masks are those it fills: the eager loop's schedule
        first = st.step_in_block == 0
        st.k_table.copy_(torch.where(first, num_transfer_tokens(counts, st.settings.steps_per_block), st.k_table))
        column = st.step_in_block.clamp(max=st.settings.steps_per_block - 1).expand(st.batch, 1)
        st.k.copy_(st.k_table.gather(1, column).squeeze(1))


def step_body(st: StepState):
    """Forward of the block rows, the step rule on the block copy, copy back into the canvas."""
    tokens = st.rule.model_input(st.canvas, st.prompt_index, out=st.pair)    # [B or 2B, L]
    logits = st.model.logits(tokens, st.key_mask if tokens is st.canvas else st.key_mask2, st.rows)
    # RNG position of block row i: (block_start + i) - row_offset, as the canvas-wide call has it
    torch.sub(st.row_offset, st.block_start, out=st.row_offset_block)
    st.rule.transfer(logits, st.block, 0, seeds=st.seeds, row_offset=st.row_offset_block, step=st.nfe, k=st.k,
                     masks_left=st.masks_left, workspace=st.workspace)
    st.canvas.index_copy_(1, st.rows, st.block)


def step_epilogue(st: StepState):
    """Count the forward if it was real; move to the next block once this one has no masks."""
    st.nfe.add_(st.active.to(torch.int64))
    done = (st.block != st.mask_id).all().to(torch.int64)         # 0-dim: the block is filled
    st.blocks_done.add_(done)
    st.block_start.add_(done * st.block_length).clamp_(max=st.last_start)
    st.step_in_block.add_(1).mul_(1 - done)


def denoise_step(st: StepState):
    """One whole step, eagerly (the body always runs: on a block without masks it is a no-op)."""
    step_prologue(st)
    step_body(st)
    step_epilogue(st)
