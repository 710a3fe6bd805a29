"""The reference generators: the public LLaDA generate() and Fast-dLLM's threshold rule and
prefix / dual caches, written to be read.

Random numbers come from the counter-based generator in illada_rt.rng (so seeded runs are
reproducible and comparable token for token); the transfer schedule is LLaDA's formula,
computed here on its own (transfer_counts), so the runtime's schedule is checked against it
rather than against itself.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .. import rng
from .model import ReferenceModel


def transfer_counts(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's get_num_transfer_tokens: masked [B] masks of a block over `steps` steps ->
    int64 [B, steps]; every step transfers floor(masked / steps), and the first
    (masked mod steps) steps one more."""
    counts = torch.zeros(masked.shape[0], steps, dtype=torch.int64)
    for b, n in enumerate(masked.tolist()):
        for i in range(steps):
            counts[b, i] = n // steps + (1 if i < n % steps else 0)
    return counts


def token_positions(attention_mask: Optional[torch.Tensor], B: int, L: int) -> torch.Tensor:
    """[B, L] index of each token among its sequence's own tokens (left padding excluded)."""
    pos = torch.arange(L, dtype=torch.int64).expand(B, L)
    if attention_mask is None:
        return pos.clone()
    pads = (attention_mask == 0).sum(1, keepdim=True).to(torch.int64)
    return pos - pads


def choose_tokens(logits, temperature, seeds, positions, step, mask_id):
    """x0 = argmax of the (optionally Gumbel-perturbed) logits, and its softmax probability.

    Perturbed score = logit - T * log(-log u), in float64: the log of the public
    exp(logit) / (-log u)**T, the same argmax without overflow. The mask token is never
    chosen (a prediction of [MASK] would leave the position masked for good); the
    softmax still runs over the whole vocabulary, as in the public code.
    """
    scores = logits.to(torch.float64)
    if temperature > 0:
        u = rng.gumbel_uniforms(seeds, positions, step, logits.shape[-1])
        scores = scores - temperature * torch.log(-torch.log(u))
    scores[..., mask_id] = float("-inf")
    x0 = scores.argmax(-1)
    p = F.softmax(logits.to(torch.float64), dim=-1)
    return x0, torch.gather(p, -1, x0[..., None]).squeeze(-1)


def select_transfer(confidence: torch.Tensor, k: torch.Tensor, threshold: Optional[float]) -> torch.Tensor:
    """confidence [B, L] (-inf where not eligible) -> bool [B, L] positions to unmask.

    Top-k (k [B]) by confidence, ties to the lower position; with a threshold, all
    eligible positions at or above it plus the single most confident one.
    """
    order = torch.sort(-confidence, dim=-1, stable=True).indices
    chosen = torch.zeros_like(confidence, dtype=torch.bool)
    for b in range(confidence.shape[0]):
        eligible = int(torch.isfinite(confidence[b]).sum())
        if threshold is None:
            picks = order[b, : min(int(k[b]), eligible)]
        else:
            top = order[b, :eligible]
            keep = confidence[b, top] >= threshold
            keep[:1] = True
            picks = top[keep]
        chosen[b, picks] = True
    return chosen


@torch.no_grad()
def generate(model: Callable, prompt: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
             mask_id: int, steps: int = 128, gen_length: int = 128, block_length: int = 128,
             temperature: float = 0.0, cfg_scale: float = 0.0, remasking: str = "low_confidence",
             threshold: Optional[float] = None, seed: int = 0,
             stop_token_ids: Sequence[int] = (), fill_id: Optional[int] = None):
    """The public LLaDA generate(), batched, with Fast-dLLM's threshold rule and early stop.

    Returns (sequences [B, P + gen_length], nfe). Sequence b draws its random numbers
    with seed ``seed + b``. Early stop: once a finished block holds one of stop_token_ids,
    everything after that token becomes fill_id (the stop token itself when None).
    """
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones(B, gen_length, dtype=attention_mask.dtype)], 1)
    prompt_index = x != mask_id
    positions = token_positions(attention_mask, B, x.shape[1])
    seeds = torch.arange(B, dtype=torch.int64) + seed
    assert gen_length % block_length == 0 and steps % (gen_length // block_length) == 0
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    nfe = 0
    finished = torch.zeros(B, dtype=torch.bool)
    for blk in range(num_blocks):
        lo, hi = P + blk * block_length, P + (blk + 1) * block_length
        schedule = transfer_counts((x[:, lo:hi] == mask_id).sum(1), steps_per_block)
        i = 0
        while (x[:, lo:hi] == mask_id).any():
            if threshold is None and i >= steps_per_block:
                break
            mask_index = x == mask_id
            mask_index[:, hi:] = False
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                both = model(torch.cat([x, un_x]), None if attention_mask is None else attention_mask.repeat(2, 1))
                cond, uncond = both.chunk(2)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = model(x, attention_mask)
            step = torch.full((B,), nfe, dtype=torch.int64)
            nfe += 1
            x0, conf = choose_tokens(logits, temperature, seeds, positions, step, mask_id)
            if remasking == "random":
                conf = rng.remask_uniforms(seeds, positions, step)
            elif remasking != "low_confidence":
                raise ValueError(remasking)
            confidence = torch.where(mask_index, conf, torch.tensor(float("-inf"), dtype=torch.float64))
            transfer = select_transfer(confidence, schedule[:, i] if threshold is None else None, threshold)
            x[transfer] = x0[transfer]
            i += 1
        if stop_token_ids:
            answer = x[:, P:]
            hit = torch.isin(answer[:, : hi - P], torch.tensor(list(stop_token_ids)))
            for b in torch.nonzero(hit.any(1) & ~finished).flatten().tolist():
                first = int(hit[b].nonzero()[0])
                answer[b, first + 1:] = answer[b, first] if fill_id is None else fill_id
                finished[b] = True
            if bool(finished.all()):
                break
    return x, nfe


def transfer_step(x, logits, lo: int, eligible, k, threshold, *, temperature, remasking, seeds, positions, step,
                  mask_id):
    """One step of generate() on the rows [lo, lo + Lr) of x [B, L] given their logits [B, Lr, V].

    eligible [B, Lr] bool: masked rows that may be unmasked; k [B] (top-k) or threshold."""
    rows = slice(lo, lo + logits.shape[1])
    x0, conf = choose_tokens(logits, temperature, seeds, positions[:, rows], step, mask_id)
    if remasking == "random":
        conf = rng.remask_uniforms(seeds, positions[:, rows], step)
    elif remasking != "low_confidence":
        raise ValueError(remasking)
    confidence = torch.where(eligible, conf, torch.tensor(float("-inf"), dtype=torch.float64))
    transfer = select_transfer(confidence, k, threshold)
    x[:, rows][transfer] = x0[transfer]


@torch.no_grad()
def generate_with_cache(model: ReferenceModel, prompt: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                        *, mode: str, mask_id: int, steps: int = 128, gen_length: int = 128, block_length: int = 128,
                        temperature: float = 0.0, remasking: str = "low_confidence",
                        threshold: Optional[float] = None, seed: int = 0):
    """Fast-dLLM's generate_with_prefix_cache (mode "prefix") / generate_with_dual_cache ("dual"),
    batched with left padding, with generate()'s random numbers and selection.

    A block's first step is a full forward that fills the cache (prefix: only positions
    before the block are kept); later steps feed x[:, lo:] (prefix) or x[:, lo:hi] (dual).
    Returns (sequences [B, P + gen_length], nfe).
    """
    assert mode in ("prefix", "dual") and gen_length % block_length == 0
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones(B, gen_length, dtype=attention_mask.dtype)], 1)
    positions = token_positions(attention_mask, B, x.shape[1])
    seeds = torch.arange(B, dtype=torch.int64) + seed
    steps_per_block = steps // (gen_length // block_length)
    nfe = 0
    for lo in range(P, P + gen_length, block_length):
        hi = lo + block_length
        schedule = transfer_counts((x[:, lo:hi] == mask_id).sum(1), steps_per_block)
        i = 0
        while (x[:, lo:hi] == mask_id).any():
            if threshold is None and i >= steps_per_block:
                break
            if i == 0:
                logits, past = model.forward_kv(x, attention_mask)
                if mode == "prefix":
                    past = [(k[:, :, :lo], v[:, :, :lo]) for k, v in past]
            elif mode == "prefix":
                logits, _ = model.forward_kv(x[:, lo:], attention_mask, past, lo)
            else:
                logits, _ = model.forward_kv(x[:, lo:hi], attention_mask, past, lo, replace=True)
            block_logits = logits[:, lo:hi] if i == 0 else logits[:, : hi - lo]
            step = torch.full((B,), nfe, dtype=torch.int64)
            nfe += 1
            transfer_step(x, block_logits, lo, x[:, lo:hi] == mask_id, schedule[:, i] if threshold is None else None,
                          threshold, temperature=temperature, remasking=remasking, seeds=seeds, positions=positions,
                          step=step, mask_id=mask_id)
            i += 1
    return x, nfe
