"""Plain-PyTorch LLaDA model and generator: the executable specification.

Written to be read, not to be fast: no fused ops, full-sequence logits every step.
Every fused path of the runtime is tested against this module.

The model follows the public LLaDA modelling code (an OLMo-style LLaMA block with
bidirectional attention); the generator follows the public LLaDA ``generate()``
(and Fast-dLLM's ``threshold`` rule), with random numbers drawn from the
counter-based generator in ``illada_rt.rng`` so that seeded runs are reproducible.
``generate_with_cache`` follows Fast-dLLM's prefix- and dual-cache generators on
``ReferenceModel.forward_kv``. Infilling and likelihood references: reference_tasks.py.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from . import rng
from .config import ModelConfig
from .decoding.schedule import num_transfer_tokens

# ----------------------------------------------------------------------------- model


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Normalise in float32, cast back, then scale (the public block's order).
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotary(x: torch.Tensor, theta: float, start: int = 0) -> torch.Tensor:
    """x: [B, H, L, hd]; rotate-half (NeoX) RoPE at positions start..start+L-1, computed in float32."""
    hd, length = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = torch.outer(torch.arange(start, start + length, dtype=torch.float32), inv_freq)  # [L, hd/2]
    angles = torch.cat([freqs, freqs], dim=-1)                                  # [L, hd]
    xf = x.float()
    x1, x2 = xf[..., : hd // 2], xf[..., hd // 2:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * angles.cos() + rotated * angles.sin()).to(x.dtype)


def attention(q, k, v, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Bidirectional attention. q: [B, Hq, L, hd], k/v: [B, Hkv, L, hd], key_mask: [B, L] bool."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [B, H, L, L]
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)


def block_forward(x, w: Dict[str, torch.Tensor], cfg: ModelConfig, key_mask):
    """One LLaDA block on x [B, L, d] at positions 0..L-1: x + attn(norm(x)), then + SwiGLU FFN."""
    return block_forward_kv(x, w, cfg, key_mask, past=None, start=0, replace=False)[0]


def block_forward_kv(x, w: Dict[str, torch.Tensor], cfg: ModelConfig, key_mask, past, start: int, replace: bool):
    """block_forward for x [B, Lx, d] at canvas positions start.., with cached keys.

    past: None, or this layer's cached (K, V) [B, Hkv, Lp, hd] after RoPE; replace=False:
    the keys are past followed by x's own (prefix cache, Lp = start); replace=True: past
    covers the canvas and x's own K/V replace positions [start, start + Lx) (dual cache).
    Returns (x, (K, V)) with the keys attended to.
    """
    B, L, _ = x.shape
    hd = cfg.head_dim
    h = rms_norm(x, w["attn_norm.weight"], cfg.rms_norm_eps)
    q = F.linear(h, w["q_proj.weight"]).view(B, L, cfg.n_heads, hd).transpose(1, 2)
    k = F.linear(h, w["k_proj.weight"]).view(B, L, cfg.n_kv_heads, hd).transpose(1, 2)
    v = F.linear(h, w["v_proj.weight"]).view(B, L, cfg.n_kv_heads, hd).transpose(1, 2)
    q, k = rotary(q, cfg.rope_theta, start), rotary(k, cfg.rope_theta, start)
    if past is not None and replace:
        k_all, v_all = past[0].clone(), past[1].clone()
        k_all[:, :, start:start + L], v_all[:, :, start:start + L] = k, v
        k, v = k_all, v_all
    elif past is not None:
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
    att = attention(q, k, v, key_mask).transpose(1, 2).reshape(B, L, cfg.d_model)
    x = x + F.linear(att, w["attn_out.weight"])
    h = rms_norm(x, w["ff_norm.weight"], cfg.rms_norm_eps)
    ff = F.silu(F.linear(h, w["ff_proj.weight"])) * F.linear(h, w["up_proj.weight"])
    return x + F.linear(ff, w["ff_out.weight"]), (k, v)


class ReferenceModel:
    """LLaDA forward from a state dict with the public parameter names.

    ``model(input_ids, attention_mask)`` returns float32 logits [B, L, vocab_size];
    padded embedding rows (beyond vocab_size) are dropped and so never chosen.
    """

    def __init__(self, cfg: ModelConfig, state: Dict[str, torch.Tensor]):
        self.cfg = cfg
        self.state = state
        p = "model.transformer."
        self.wte = state[p + "wte.weight"]
        self.ln_f = state[p + "ln_f.weight"]
        self.head = self.wte if cfg.weight_tying else state[p + "ff_out.weight"]
        self.blocks = [
            {name[len(f"{p}blocks.{i}."):]: t for name, t in state.items() if name.startswith(f"{p}blocks.{i}.")}
            for i in range(cfg.n_layers)
        ]

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        key_mask = None if attention_mask is None else attention_mask.bool()
        x = F.embedding(input_ids, self.wte)
        for w in self.blocks:
            x = block_forward(x, w, self.cfg, key_mask)
        x = rms_norm(x, self.ln_f, self.cfg.rms_norm_eps)
        return F.linear(x, self.head).float()[..., : self.cfg.vocab_size]

    @torch.no_grad()
    def forward_kv(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, past=None,
                   start: int = 0, replace: bool = False):
        """Logits [B, Lx, vocab_size] of input_ids [B, Lx] at canvas positions start.., and the
        per-layer (K, V) [B, Hkv, Lk, hd] after RoPE that they attended to (see block_forward_kv).
        attention_mask covers the keys [B, Lk]."""
        key_mask = None if attention_mask is None else attention_mask.bool()
        x = F.embedding(input_ids, self.wte)
        present = []
        for i, w in enumerate(self.blocks):
            x, kv = block_forward_kv(x, w, self.cfg, key_mask, None if past is None else past[i], start, replace)
            present.append(kv)
        x = rms_norm(x, self.ln_f, self.cfg.rms_norm_eps)
        return F.linear(x, self.head).float()[..., : self.cfg.vocab_size], present


# ----------------------------------------------------------------------------- generation


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
        schedule = num_transfer_tokens((x[:, lo:hi] == mask_id).sum(1), steps_per_block)
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
        schedule = num_transfer_tokens((x[:, lo:hi] == mask_id).sum(1), steps_per_block)
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
