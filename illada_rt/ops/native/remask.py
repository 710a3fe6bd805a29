"""Torch twin of the remask family: one denoising step's token choice and transfer, in place.

The contract is csrc/include/remask.h's, computed with torch ops on the logits' device:

  phase 1, per masked row i of the block (tokens[b, block_start + i] == mask_id):
    l     = cfg ? un + (cfg_scale + 1) * (cond - un) : cond        float32, vocab entries only
    x0    = argmax_{v != mask_id} l_v - T * log(-log u_v)           float64; first maximum wins
    conf  = softmax(l)[x0] in float64 (low_confidence), or u from the random-remask stream
  phase 2, per sequence: the top k[b] masked rows by conf (ties: lower position first), or every
    row with conf >= threshold plus the most confident one; x0 is written there.

Random numbers come from illada_rt.rng: the Philox counters the kernels use, so both paths draw
the same noise. With a workspace nothing reads the device from the host, every shape is fixed by
the arguments, and nothing is allocated but temporaries: the step can be captured in a CUDA graph.
Non-finite logits in a masked row then set workspace[0] non-zero (sticky) and, while it is set,
nothing is transferred, as the CUDA kernel does, on every device; without a workspace they raise
RuntimeError (one host read).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from ... import rng
from ..core import remask_workspace_bytes
from .contract import (expect, expect_float, expect_last_contiguous, expect_same_device, expect_shape,
                       expect_vector, refuse)

# Vocabulary entries scored at once (rows x vocab): bounds the float64 and Philox temporaries
# (about 8 tensors of this many 8-byte values) whatever the batch and block size.
_CHUNK_ENTRIES = 1 << 24
NON_FINITE = "remask: logits contain NaN or infinity (the model produced non-finite values)"


def _check(logits, tokens, block_start, vocab, seeds, row_offset, step, uncond, temperature, remasking, k,
           x0, conf, masks_left) -> None:
    """The binding's rules (csrc/bind/bind_remask.cpp), checked before anything is written."""
    expect_float(logits, "logits", "remask")
    expect(logits, "logits", 3, logits.dtype)
    expect_last_contiguous(logits, "logits")
    B, Lb, width = logits.shape
    if not 0 < vocab <= width:
        refuse(f"remask: vocab {vocab} outside (0, {width}]")
    expect(tokens, "tokens", 2, torch.int64)
    expect_same_device(tokens, logits, "tokens", "logits")
    if tokens.shape[0] != B:
        refuse(f"remask: tokens batch {tokens.shape[0]} != logits batch {B}")
    if tokens.shape[1] > 1 and tokens.stride(1) != 1:
        refuse("remask: tokens must be contiguous in its last dim")
    if block_start < 0 or block_start + Lb > tokens.shape[1]:
        refuse(f"remask: block [{block_start}, {block_start + Lb}) outside tokens of length {tokens.shape[1]}")
    if not temperature >= 0.0:
        refuse("remask: temperature must be >= 0")
    if remasking not in ("low_confidence", "random"):
        refuse(f"remask: remasking must be 'low_confidence' or 'random', got '{remasking}'")
    for name, t in (("seeds", seeds), ("row_offset", row_offset), ("step", step)):
        expect_vector(t, name, B, logits)
    if uncond is not None:
        expect(uncond, "uncond", 3, logits.dtype)
        expect_same_device(uncond, logits, "uncond", "logits")
        expect_shape(uncond, "uncond", logits.shape)
        if uncond.stride() != logits.stride():
            refuse("remask: uncond must have the strides of logits")
    if k is not None:
        expect_vector(k, "k", B, logits)
    for name, t, dtype, shape in (("x0", x0, torch.int64, (B, Lb)), ("conf", conf, torch.float64, (B, Lb)),
                                  ("masks_left", masks_left, torch.int64, (B,))):
        if t is None:
            continue
        expect_same_device(t, logits, name, "logits")
        expect(t, name, len(shape), dtype)
        expect_shape(t, name, shape)
        if not t.is_contiguous():
            refuse(f"{name} must be contiguous")


def _choose_rows(l: torch.Tensor, mask_id: int, temperature: float, seeds: torch.Tensor, positions: torch.Tensor,
                 step: torch.Tensor, random: bool):
    """Phase 1 on rows l [R, V] float32 (R flattened block rows; seeds, positions, step [R]):
    (x0 [R] int64, conf [R] float64, finite [R] bool)."""
    R, V = l.shape
    score = l.double()
    if temperature > 0:
        u = rng.gumbel_uniforms(seeds, positions[:, None], step, V)[:, 0]      # [R, V]
        score = score - temperature * torch.log(-torch.log(u))
    if 0 <= mask_id < V:
        score[:, mask_id] = float("-inf")                                      # [MASK] is never predicted
    x0 = score.argmax(-1)                                                       # first maximum wins
    top = l.amax(-1, keepdim=True)                                              # float32, [MASK] included
    total = torch.exp(l.double() - top.double()).sum(-1)
    conf = torch.exp(l.gather(1, x0[:, None])[:, 0].double() - top[:, 0].double()) / total
    finite = torch.isfinite(total) & ~torch.isnan(conf)
    if random:
        conf = rng.remask_uniforms(seeds, positions[:, None], step)[:, 0]
    return x0, conf, finite


def remask_(logits: torch.Tensor, tokens: torch.Tensor, block_start: int, *, vocab: int, mask_id: int,
            seeds: torch.Tensor, row_offset: torch.Tensor, step: torch.Tensor,
            uncond: Optional[torch.Tensor] = None, cfg_scale: float = 0.0, temperature: float = 0.0,
            remasking: str = "low_confidence", k: Optional[torch.Tensor] = None,
            threshold: Optional[float] = None, x0: Optional[torch.Tensor] = None,
            conf: Optional[torch.Tensor] = None, masks_left: Optional[torch.Tensor] = None,
            workspace: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One denoising step on tokens[:, block_start : block_start + logits.shape[1]], in place
    (ops.remask_'s signature and contract; see the module docstring)."""
    if (k is None) == (threshold is None):
        refuse("remask: give exactly one of k (top-k) and threshold")
    block_start, vocab, mask_id = int(block_start), int(vocab), int(mask_id)
    temperature = float(temperature)
    _check(logits, tokens, block_start, vocab, seeds, row_offset, step, uncond, temperature, remasking, k,
           x0, conf, masks_left)

    def choose(l, row_seeds, row_pos, row_step):
        return _choose_rows(l, mask_id, temperature, row_seeds, row_pos, row_step, remasking == "random")

    return remask_rows(choose, vocab, vocab, logits, tokens, block_start, mask_id=mask_id, seeds=seeds,
                       row_offset=row_offset, step=step, uncond=uncond, cfg_scale=cfg_scale, k=k,
                       threshold=threshold, x0=x0, conf=conf, masks_left=masks_left, workspace=workspace)


RowChooser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                      Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def remask_rows(choose: RowChooser, cols: int, chunk_cols: int, logits: torch.Tensor, tokens: torch.Tensor,
                block_start: int, *, mask_id: int, seeds: torch.Tensor, row_offset: torch.Tensor,
                step: torch.Tensor, uncond: Optional[torch.Tensor], cfg_scale: float, k: Optional[torch.Tensor],
                threshold: Optional[float], x0: Optional[torch.Tensor], conf: Optional[torch.Tensor],
                masks_left: Optional[torch.Tensor], workspace: Optional[torch.Tensor]) -> torch.Tensor:
    """The step on checked arguments, with phase 1 delegated: choose(l [r, cols] float32 CFG-combined
    logits, seeds [r], positions [r], step [r]) -> (x0 [r], conf [r] float64, finite [r] bool) for
    chunks of rows of at most _CHUNK_ENTRIES / chunk_cols each (the vocab-parallel remask passes a
    chooser that combines the ranks' slices, and the same chunk_cols on every rank)."""
    B, Lb, _ = logits.shape
    dev = logits.device
    block = tokens[:, block_start:block_start + Lb]                             # [B, Lb] view
    masked = block == mask_id
    positions = block_start + torch.arange(Lb, dtype=torch.int64, device=dev)[None, :] - row_offset[:, None]

    # phase 1 over the flattened rows, a chunk of rows at a time
    R = B * Lb
    rows_l = logits[..., :cols].reshape(R, cols)
    rows_u = None if uncond is None else uncond[..., :cols].reshape(R, cols)
    row_seeds = seeds[:, None].expand(B, Lb).reshape(R)
    row_step = step[:, None].expand(B, Lb).reshape(R)
    row_pos = positions.reshape(R)
    choice = torch.empty(R, dtype=torch.int64, device=dev)
    confidence = torch.empty(R, dtype=torch.float64, device=dev)
    finite = torch.empty(R, dtype=torch.bool, device=dev)
    chunk = max(1, _CHUNK_ENTRIES // max(chunk_cols, 1))
    weight = float(cfg_scale) + 1.0                                              # rounded to float32 by torch
    for r0 in range(0, R, chunk):
        part = slice(r0, min(R, r0 + chunk))
        l = rows_l[part].float()
        if rows_u is not None:
            un = rows_u[part].float()
            l = un + weight * (l - un)
        choice[part], confidence[part], finite[part] = choose(l, row_seeds[part], row_pos[part], row_step[part])
    choice, confidence, finite = choice.view(B, Lb), confidence.view(B, Lb), finite.view(B, Lb)
    bad = masked & ~finite
    confidence = torch.where(masked & finite, confidence, float("-inf"))      # [B, Lb], -inf: not a candidate

    if workspace is None:
        if bool(bad.any()):
            raise RuntimeError(NON_FINITE)
        allowed = None
    else:
        expect(workspace, "workspace", 1, torch.int64)
        expect_same_device(workspace, logits, "workspace", "logits")
        if workspace.numel() * 8 < remask_workspace_bytes(B, Lb):     # the compiled op's rule, kept alike
            refuse(f"remask: workspace holds {workspace.numel()} int64, remask_workspace({B}, {Lb}) needs more")
        flag = workspace[:1]
        flag.bitwise_or_(bad.any().to(torch.int64).view(1))
        allowed = flag == 0                                                      # [1]: sticky error blocks transfers

    # phase 2: rank the masked rows by (conf desc, position asc); transfer the first `take`
    order = torch.sort(confidence, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(Lb, device=dev).expand(B, Lb))
    n_masked = masked.sum(1)                                                     # [B]
    if k is not None:
        take = torch.minimum(k.clamp(min=0), n_masked)
    else:
        above = (masked & (confidence >= float(threshold))).sum(1)
        take = torch.maximum(above, n_masked.clamp(max=1))                       # at least the most confident
    if allowed is not None:
        take = torch.where(allowed, take, 0)                                     # non-finite logits: none
    transfer = masked & (rank < take[:, None])
    block.copy_(torch.where(transfer, choice, block))

    if x0 is not None:
        x0.copy_(torch.where(masked, choice, -1))
    if conf is not None:
        conf.copy_(confidence)
    if masks_left is not None:
        masks_left.copy_(n_masked - take)
    return tokens
