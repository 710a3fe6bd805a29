"""The host side of a generation driven by the device-only step (graph_step.py).

`replay()` runs one step: a CUDA graph replay, or graph_step.denoise_step eagerly. The host
never needs the device to know how many steps to run, except where noted:

    top-k rule  every answer block starts full of masks, so each runs the same number of steps
                (denoise.scheduled_steps of a full block): a whole generation is n_blocks * n_steps
                replays with no host read until the end. With stop tokens, one read per block.
    threshold   a block fills in at most Lb steps, and a step on a filled block is a no-op, so
                every replay past the end is harmless. Where such a replay is cheap (the CUDA graph
                skips the body through a conditional node) the host replays the bound, n_blocks * Lb,
                without reading; otherwise it replays in rounds, each long enough to finish the
                current block (Lb, then the block's masks left), reading the progress once per
                round: at most one read per block, and at most Lb - 1 surplus steps at the end.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..loop import _fill_after_stop, scheduled_steps
from .state import StepState
from ..schedule import num_transfer_tokens


def steps_per_full_block(block_length: int, steps_per_block: int) -> int:
    """Steps the top-k rule takes on a block of block_length masks (fewer than steps_per_block
    when the schedule has zero-transfer steps)."""
    counts = torch.full((1,), block_length, dtype=torch.int64)
    return scheduled_steps(counts, num_transfer_tokens(counts, steps_per_block))


def check_finite(st: StepState):
    """Raise if a remask met non-finite logits (one 8-byte device read)."""
    if int(st.workspace[0]) != 0:
        raise RuntimeError("remask: logits contain NaN or infinity (the model produced non-finite values; "
                           "detected on CUDA at the end of a graph-step generation)")


def _progress(st: StepState) -> list:
    """One device read: [blocks done, bound on the current block's remaining steps, error word]."""
    left = torch.where(st.step_in_block == 0, st.block_length, st.masks_left.amax())
    return torch.stack([st.blocks_done, left, st.workspace[0]]).tolist()


def run_steps(st: StepState, replay: Callable[[], None], prompt_len: int, gen_length: int,
              stop_ids: Sequence[int] = (), fill_id=None, noop_is_cheap: bool = False) -> int:
    """Denoise the generation loaded into st to the end; returns the forward count (nfe).

    stop_ids: early stop as in denoise.py (top-k rule only): after each block, rows holding a
    stop token are filled after it, and the generation ends once every row has stopped.
    """
    s, Lb = st.settings, st.block_length
    n_blocks = gen_length // Lb
    if s.threshold is None:
        n_steps = steps_per_full_block(Lb, s.steps_per_block)
        stops = torch.tensor(list(stop_ids), dtype=torch.int64, device=st.canvas.device)
        finished = torch.zeros(st.batch, dtype=torch.bool, device=st.canvas.device)
        for blk in range(n_blocks):
            for _ in range(n_steps):
                replay()
            if len(stops):
                check_finite(st)
                _fill_after_stop(st.canvas[:, prompt_len:], (blk + 1) * Lb, stops, finished, fill_id)
                if bool(finished.all()):
                    break
    else:
        if len(stop_ids):
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
    check_finite(st)
    return int(st.nfe[0])
