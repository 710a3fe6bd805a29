"""The host side of a generation driven by the device-only step (state.py).

`replay()` runs one step: a CUDA graph replay, or state.denoise_step eagerly. The host
never needs the device to know how many steps to run, except where noted:

    top-k rule  every answer block starts full of masks, so each runs the same number of steps
                (schedule.steps_per_full_block): a whole generation is n_blocks * n_steps
                replays with no host read until the end. With stop tokens, one read per block.
    threshold   a block fills in at most Lb steps, and a step on a filled block is a no-op, so
                every replay past the end is harmless. Where such a replay is cheap (the CUDA graph
                skips the body through a conditional node) the host replays the bound, n_blocks * Lb,
                without reading; otherwise it replays in rounds, each long enough to finish the
                current block (Lb, then the block's masks left), reading the progress once per
                round: at most one read per block, and at most Lb - 1 surplus steps at the end.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..plan import GenerationPlan
from ..schedule import steps_per_full_block
from .state import StepState


def _progress(st: StepState) -> list:
    """One device read: [blocks done, bound on the current block's remaining steps, error word]."""
    left = torch.where(st.step_in_block == 0, st.block_length, st.masks_left.amax())
    return torch.stack([st.blocks_done, left, st.workspace[0]]).tolist()


def run_steps(st: StepState, replay: Callable[[], None], plan: GenerationPlan, noop_is_cheap: bool = False) -> int:
    """Denoise the plan loaded into st to the end; returns the forward count (nfe).

    Early stop (the settings' stop tokens; top-k rule only): after each block the step rule's
    end_block fills rows after their stop token, and the generation ends once every row has stopped.
    """
    s, Lb, rule = st.settings, st.block_length, st.rule
    n_blocks = (plan.canvas.shape[1] - plan.prompt_len) // Lb
    where = "at the end of a graph-step generation"
    if s.threshold is None:
        n_steps = steps_per_full_block(Lb, s.steps_per_block)
        finished = torch.zeros(st.batch, dtype=torch.bool, device=st.canvas.device)
        for blk in range(n_blocks):
            for _ in range(n_steps):
                replay()
            if len(s.stop_token_ids) and rule.end_block(st.canvas[:, plan.prompt_len:], (blk + 1) * Lb, finished,
                                                        st.workspace, f"at the end of block {blk}"):
                break
    else:
        if len(s.stop_token_ids):
            raise ValueError("the graph step runs the threshold rule without stop tokens "
                             "(early stop needs block boundaries: use the eager loop)")
        bound = n_blocks * Lb           # the eager loop's bound: at most Lb steps per block
        if noop_is_cheap:
            for _ in range(bound):
                replay()
        else:
            replays, chunk = 0, Lb
            while replays < bound:
                chunk = min(chunk, bound - replays)
                for _ in range(chunk):
                    replay()
                replays += chunk
                done, chunk, error = _progress(st)
                if done >= n_blocks or error:
                    break
    rule.check_finite(st.workspace, where)
    return int(st.nfe[0])
