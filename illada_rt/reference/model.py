"""The reference LLaDA model: a plain-PyTorch forward from a state dict with the public names.

Written to be read, not to be fast: no fused ops, full-sequence logits. It follows the public
LLaDA modelling code (an OLMo-style LLaMA block with bidirectional attention); every fused path
of the runtime's model is tested against it.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ..config import ModelConfig


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
