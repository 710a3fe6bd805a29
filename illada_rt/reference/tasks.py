"""Plain-PyTorch references for infilling and likelihood scoring (see generate.py).

Written to be read: full-sequence logits from ReferenceModel, one sequence or one
sample at a time where that is clearer. Tests hold illada_rt.decoding.infill and
illada_rt.decoding.likelihood to these.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from .generate import token_positions, transfer_counts, transfer_step


@torch.no_grad()
def infill(model, tokens: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *, mask_id: int, steps: int,
           block_length: Optional[int] = None, temperature: float = 0.0, remasking: str = "low_confidence",
           threshold: Optional[float] = None, seed: int = 0):
    """Fill the masks of tokens [B, L] in blocks of block_length masks per sequence, left to right.

    Block j of sequence b is its masks of rank j*block_length .. (j+1)*block_length - 1;
    steps are split evenly over the blocks; each step is a generate() step restricted to
    the block's masks. Returns (sequences [B, L], nfe).
    """
    x = tokens.clone()
    B, L = x.shape
    to_fill = x == mask_id
    rank = to_fill.cumsum(1) - 1
    most = int(to_fill.sum(1).max())
    block_length = block_length or most
    num_blocks = -(-most // block_length)
    steps_per_block = steps // num_blocks
    positions = token_positions(attention_mask, B, L)
    seeds = torch.arange(B, dtype=torch.int64) + seed
    nfe = 0
    for blk in range(num_blocks):
        in_block = to_fill & (rank // block_length == blk)
        schedule = transfer_counts(in_block.sum(1), steps_per_block)
        i = 0
        while (in_block & (x == mask_id)).any():
            if threshold is None and i >= steps_per_block:
                break
            logits = model(x, attention_mask)
            step = torch.full((B,), nfe, dtype=torch.int64)
            nfe += 1
            transfer_step(x, logits, 0, in_block & (x == mask_id), schedule[:, i] if threshold is None else None,
                          threshold, temperature=temperature, remasking=remasking, seeds=seeds, positions=positions,
                          step=step, mask_id=mask_id)
            i += 1
    return x, nfe


def forward_process(seq: torch.Tensor, prompt_len: int, mask_id: int, generator: torch.Generator):
    """LLaDA's forward_process for seq [b, L] (identical rows): mask n_i of the answer tokens
    of row i, the n_i evenly spread from k ~ U{1..A}; returns (noisy [b, L], n_i / A [b, L])."""
    b, L = seq.shape
    A = L - prompt_len
    k = torch.randint(1, A + 1, (), generator=generator)
    n = torch.round(torch.linspace(float(k), k + (b - 1) * (A / b), steps=b)).long()
    n = ((n - 1) % A) + 1
    is_mask = torch.zeros(b, L, dtype=torch.bool)
    for i in range(b):
        is_mask[i, prompt_len:] = (torch.arange(A) < n[i])[torch.randperm(A, generator=generator)]
    return torch.where(is_mask, mask_id, seq), (n / A)[:, None].repeat(1, L)


@torch.no_grad()
def log_likelihood(model, prompt: List[int], answer: List[int], *, mask_id: int, mc_num: int = 128,
                   batch_size: int = 16, cfg_scale: float = 0.0, generator: torch.Generator) -> float:
    """LLaDA's get_log_likelihood: minus the mean over mc_num / batch_size batches of
    sum(cross-entropy of the masked answer tokens / mask ratio) / batch_size."""
    P = len(prompt)
    seq = torch.tensor(prompt + answer, dtype=torch.long)[None].repeat(batch_size, 1)
    losses = []
    for _ in range(mc_num // batch_size):
        noisy, p_mask = forward_process(seq, P, mask_id, generator)
        masked = noisy == mask_id
        if cfg_scale > 0:
            uncond = noisy.clone()
            uncond[:, :P] = mask_id
            cond, un = model(torch.cat([noisy, uncond])).chunk(2)
            logits = un + (cfg_scale + 1) * (cond - un)
        else:
            logits = model(noisy)
        loss = F.cross_entropy(logits[masked], seq[masked], reduction="none") / p_mask[masked]
        losses.append((loss.sum() / batch_size).item())
    return -sum(losses) / len(losses)


@torch.no_grad()
def score_choice(model, prompt: List[int], option: List[int], *, mask_id: int) -> float:
    """log p(option | prompt) with every option token masked: one forward, summed log-probs."""
    x = torch.tensor([prompt + [mask_id] * len(option)], dtype=torch.long)
    logp = model(x)[0, len(prompt):].double().log_softmax(-1)
    return float(logp[torch.arange(len(option)), torch.tensor(option)].sum())
