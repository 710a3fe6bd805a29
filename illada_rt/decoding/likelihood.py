"""Likelihood scoring with the public LLaDA Monte-Carlo estimate, and one-pass choice scores.

log_likelihood (LLaDA's get_log_likelihood): for a prompt p and answer a of length A,
mc_num masked copies of p + a are drawn in batches of batch_size. Per batch, one
count k ~ U{1..A} is drawn and the batch's masking counts are spread evenly from it,
    n_i = ((round(linspace(k, k + (b-1) A/b, b))_i - 1) mod A) + 1,   i < b,
copy i masks n_i answer positions chosen by a random permutation, and the loss is
    sum over masked answer positions of -log p(a_j | copy) / (n_i / A),
summed over the batch, divided by batch_size, averaged over the batches; the
estimate is its negative (a lower bound of log p(a | p) in expectation).
Random numbers: pair j of a call draws from torch.Generator().manual_seed(seed + j),
in LLaDA's order (per batch: k, then one permutation per copy), so a pair's estimate
does not depend on the other pairs of the call.

score_choices: each option is masked whole, once; its score is the sum of the
log-probabilities of its tokens from that single forward (LLaDA's estimate at k = A).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ..model import LLaDAModel


def as_token_list(seq, name: str) -> List[int]:
    """A 1-D token sequence (list or tensor) -> list of ints."""
    if isinstance(seq, torch.Tensor):
        if seq.dim() != 1 or seq.is_floating_point():
            raise ValueError(f"{name} must be a 1-D integer tensor, got shape {tuple(seq.shape)} {seq.dtype}")
        return [int(t) for t in seq.tolist()]
    try:
        return [int(t) for t in seq]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of token ids") from None


def is_single(seq) -> bool:
    """True for one token sequence ([1, 2] or a 1-D tensor), False for a list of them."""
    if isinstance(seq, torch.Tensor):
        return seq.dim() == 1
    return len(seq) == 0 or not isinstance(seq[0], (list, tuple, torch.Tensor))


def check_pairs(model: LLaDAModel, prompts, answers,
                answer_name: str = "answers") -> Tuple[bool, List[List[int]], List[List[int]]]:
    """(single, prompts, answers) as token lists, checked: one pair, or equal-length lists of them."""
    cfg = model.cfg
    single = is_single(prompts)
    if single != is_single(answers):
        raise ValueError("prompts and answers must both be one token sequence or both lists of them")
    prompts, answers = ([prompts], [answers]) if single else (list(prompts), list(answers))
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"got {len(prompts)} prompts and {len(answers)} answers; give as many, at least one")
    prompts = [as_token_list(p, f"prompts[{j}]") for j, p in enumerate(prompts)]
    answers = [as_token_list(a, f"{answer_name}[{j}]") for j, a in enumerate(answers)]
    for j, (prompt, answer) in enumerate(zip(prompts, answers)):
        if not answer:
            raise ValueError(f"{answer_name}[{j}] is empty; give at least one token")
        for part, ids in (("prompts", prompt), (answer_name, answer)):
            bad = [t for t in ids if not 0 <= t < cfg.vocab_size or t == cfg.mask_token_id]
            if bad:
                raise ValueError(f"{part}[{j}]: token {bad[0]} is outside [0, {cfg.vocab_size}) or is the mask id")
        if len(prompt) + len(answer) > cfg.max_sequence_length:
            raise ValueError(f"pair {j}: prompt + answer = {len(prompt) + len(answer)} tokens exceeds "
                             f"max_sequence_length {cfg.max_sequence_length}")
    return single, prompts, answers


def check_estimate(mc_num: int, batch_size: int, cfg_scale: float):
    for name, v in (("mc_num", mc_num), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if mc_num % batch_size:
        raise ValueError(f"mc_num {mc_num} is not a multiple of batch_size {batch_size}")
    if not cfg_scale >= 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")


def draw_masks(answer_len: int, batch_size: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """One MC batch: which answer positions each copy masks [b, A] bool, and n_i / A [b] float32."""
    A, b = answer_len, batch_size
    k = torch.randint(1, A + 1, (), generator=generator)
    counts = torch.round(torch.linspace(float(k), k + (b - 1) * (A / b), steps=b)).long()
    counts = (counts - 1) % A + 1                                          # [b] in 1..A
    # rank of each position in a fresh permutation; the n_i lowest ranks are masked
    is_mask = torch.stack([torch.randperm(A, generator=generator) < counts[i] for i in range(b)])
    return is_mask, counts / A


def _answer_logprobs(model: LLaDAModel, tokens: torch.Tensor, key_mask: Optional[torch.Tensor], prompt_len: int,
                     targets: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """log p(targets) [B, A] float32 at the answer rows [P, P + A) of tokens [B, L].

    Inputs on the CPU; the forward runs on the model's device, the result comes back to the CPU.
    CFG as in LLaDA: the unconditional branch has the prompt masked."""
    dev = model.device
    tokens, targets = tokens.to(dev), targets.to(dev)
    key_mask = None if key_mask is None else key_mask.to(dev)
    rows = slice(prompt_len, prompt_len + targets.shape[1])
    if cfg_scale > 0:
        uncond = tokens.clone()
        uncond[:, :prompt_len] = model.cfg.mask_token_id
        both = model.logits(torch.cat([tokens, uncond]), None if key_mask is None else key_mask.repeat(2, 1), rows)
        cond, un = both.chunk(2)
        logits = un + (cfg_scale + 1) * (cond - un)
    else:
        logits = model.logits(tokens, key_mask, rows)                     # [B, A, E]
    return model.target_logprobs(logits, targets).cpu()


@torch.no_grad()
def log_likelihood(model: LLaDAModel, prompts: Sequence[List[int]], answers: Sequence[List[int]], mc_num: int,
                   batch_size: int, cfg_scale: float, seed: int) -> torch.Tensor:
    """[N] float64 Monte-Carlo log-likelihood estimates of answers[j] given prompts[j]."""
    mask_id = model.cfg.mask_token_id
    out = torch.empty(len(prompts), dtype=torch.float64)
    for j, (prompt, answer) in enumerate(zip(prompts, answers)):
        g = torch.Generator().manual_seed(seed + j)
        P, A = len(prompt), len(answer)
        seq = torch.tensor(prompt + answer, dtype=torch.int64)
        target = seq[P:].expand(batch_size, A)                             # [b, A]
        batch_losses = []
        for _ in range(mc_num // batch_size):
            is_mask, p_mask = draw_masks(A, batch_size, g)                 # [b, A], [b]
            tokens = seq.repeat(batch_size, 1)                             # [b, P + A]
            tokens[:, P:] = target.masked_fill(is_mask, mask_id)
            logp = _answer_logprobs(model, tokens, None, P, target, cfg_scale)
            loss = (-logp[is_mask] / p_mask[:, None].expand(-1, A)[is_mask]).sum() / batch_size
            batch_losses.append(loss.item())
        out[j] = -sum(batch_losses) / len(batch_losses)
    return out


@torch.no_grad()
def score_choices(model: LLaDAModel, prompt: List[int], options: Sequence[List[int]]) -> torch.Tensor:
    """[n_options] float64: sum of log p(option tokens | prompt, option fully masked), one forward."""
    mask_id = model.cfg.mask_token_id
    P, width = len(prompt), max(len(o) for o in options)
    tokens = torch.full((len(options), P + width), mask_id, dtype=torch.int64)
    tokens[:, :P] = torch.tensor(prompt, dtype=torch.int64)
    targets = torch.zeros(len(options), width, dtype=torch.int64)        # [n, A_max], right-padded
    valid = torch.zeros(len(options), width, dtype=torch.bool)
    for i, o in enumerate(options):
        targets[i, : len(o)] = torch.tensor(o, dtype=torch.int64)
        valid[i, : len(o)] = True
    # Shorter options are right-padded; the padding is hidden from attention as keys.
    key_mask = None if bool(valid.all()) else torch.cat([torch.ones(len(options), P, dtype=torch.bool), valid], 1)
    logp = _answer_logprobs(model, tokens, key_mask, P, targets, 0.0)
    return (logp.double() * valid).sum(1)
