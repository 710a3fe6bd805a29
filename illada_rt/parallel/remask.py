"""The remask of a tensor-parallel rank: it holds a vocabulary slice of every block row's logits,
reduces its slice to five numbers per row, and the ranks combine them; logits are never gathered.

Per rank and row, over its slice [v0, v1) of the generable vocabulary [0, vocab):
    best    the largest (Gumbel-perturbed, as ops remask.h) score, [MASK] excluded
    id      its global token id (the first of equal maxima)
    top     the largest logit ([MASK] included, as the softmax)
    total   sum of exp(l - top) in float64
    l_best  the logit at id
Combined (one all-gather of [5, rows] float64 per chunk of rows):
    x0   = the id of the largest best (equal bests: the lowest rank, so the lowest id)
    conf = exp(l_best - M) / sum_r total_r exp(top_r - M),  M = max_r top_r
which is the single-process choice: the same token (ties: the lowest id) and the same confidence
up to the order of the float64 sum. The selection that follows runs on every rank alike
(ops/native/remask.py's phase 2), so every rank transfers the same tokens.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from .. import rng
from ..model.shard import ModelShard
from ..ops import Kernels
from ..ops.native.remask import _check, remask_rows
from ..ops.native.contract import refuse

NEG_INF = float("-inf")


def slice_stats(l: torch.Tensor, vocab_start: int, mask_id: int, temperature: float, seeds: torch.Tensor,
                positions: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """[5, R] float64 (best, id, top, total, l_best) of rows l [R, W] float32 holding the generable
    vocabulary entries [vocab_start, vocab_start + W); W may be 0."""
    R, W = l.shape
    if W == 0:
        none = torch.full((R,), NEG_INF, dtype=torch.float64, device=l.device)
        return torch.stack([none, torch.full_like(none, -1), none, torch.zeros_like(none), none])
    score = l.double()
    if temperature > 0:
        u = rng.gumbel_uniforms(seeds, positions[:, None], step, W, vocab_start)[:, 0]   # [R, W]
        score = score - temperature * torch.log(-torch.log(u))
    if vocab_start <= mask_id < vocab_start + W:
        score[:, mask_id - vocab_start] = NEG_INF                  # [MASK] is never predicted
    best, local = score.max(-1)                                    # first maximum
    top = l.amax(-1)
    total = torch.exp(l.double() - top.double()[:, None]).sum(-1)
    l_best = l.gather(1, local[:, None])[:, 0]
    return torch.stack([best, (local + vocab_start).double(), top.double(), total, l_best.double()])


def combine(stats: torch.Tensor):
    """stats [N, 5, R] of the N ranks, in rank order -> (x0 [R] int64, conf [R] float64, finite [R] bool)."""
    best, ids, top, total, l_best = stats.unbind(1)                # each [N, R]
    winner = best.argmax(0, keepdim=True)                          # [1, R]: the lowest rank of equal bests
    x0 = ids.gather(0, winner)[0].to(torch.int64)
    M = top.amax(0)
    whole = (total * torch.exp(top - M)).sum(0)
    conf = torch.exp(l_best.gather(0, winner)[0] - M) / whole
    finite = torch.isfinite(whole) & ~torch.isnan(conf)
    return x0, conf, finite


def vocab_parallel_remask_(shard: ModelShard, logits: torch.Tensor, tokens: torch.Tensor, block_start: int, *,
                           vocab: int, mask_id: int, seeds: torch.Tensor, row_offset: torch.Tensor,
                           step: torch.Tensor, uncond: Optional[torch.Tensor] = None, cfg_scale: float = 0.0,
                           temperature: float = 0.0, remasking: str = "low_confidence",
                           k: Optional[torch.Tensor] = None, threshold: Optional[float] = None,
                           x0: Optional[torch.Tensor] = None, conf: Optional[torch.Tensor] = None,
                           masks_left: Optional[torch.Tensor] = None,
                           workspace: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ops.remask_ on this rank's vocabulary slice of the logits [B, Lb, vocab_rows] (see the module
    docstring); `vocab` is the whole generable vocabulary. Every rank calls it with equal arguments
    but the logits, and every rank's tokens change alike."""
    if (k is None) == (threshold is None):
        refuse("remask: give exactly one of k (top-k) and threshold")
    block_start, vocab, mask_id, temperature = int(block_start), int(vocab), int(mask_id), float(temperature)
    if logits.dim() != 3 or logits.shape[-1] != shard.vocab_rows:
        refuse(f"remask: a tensor-parallel rank takes its vocabulary slice [B, Lb, {shard.vocab_rows}], "
               f"got logits of shape {tuple(logits.shape)}")
    _check(logits, tokens, block_start, logits.shape[-1], seeds, row_offset, step, uncond, temperature, remasking, k,
           x0, conf, masks_left)
    cols = max(0, min(vocab - shard.vocab_start, shard.vocab_rows))   # the generable columns held
    random = remasking == "random"

    def choose(l, row_seeds, row_pos, row_step):
        stats = slice_stats(l, shard.vocab_start, mask_id, temperature, row_seeds, row_pos, row_step)
        x, c, finite = combine(shard.all_gather(stats))
        if random:
            c = rng.remask_uniforms(row_seeds, row_pos[:, None], row_step)[:, 0]
        return x, c, finite

    return remask_rows(choose, cols, shard.vocab_per_rank, logits, tokens, block_start, mask_id=mask_id,
                       seeds=seeds, row_offset=row_offset, step=step, uncond=uncond, cfg_scale=cfg_scale, k=k,
                       threshold=threshold, x0=x0, conf=conf, masks_left=masks_left, workspace=workspace)


def with_vocab_parallel_remask(kernels: Kernels, shard: ModelShard) -> Kernels:
    """A copy of kernels whose remask_ is the rank's vocab-parallel one; the other ops unchanged
    (compiled or torch twin, as chosen)."""
    out = Kernels({**kernels.choice, "remask": "torch"})          # the vocab-parallel remask is torch code
    out.remask_ = functools.partial(vocab_parallel_remask_, shard)
    return out
