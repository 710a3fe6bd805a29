"""Torch twin of the attention family: bidirectional GQA attention with a key-padding mask,
through torch's scaled_dot_product_attention (flash / memory-efficient / math, as torch picks).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .contract import expect, expect_float, expect_last_contiguous, expect_same_device, expect_shape, refuse

# enable_gqa (torch >= 2.5) lets the kernel share each KV head among its query heads; older
# torch gets K/V repeated per query head instead.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None,
              out: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """Bidirectional GQA attention. q [B, Lq, H, D], k/v [B, Lk, Hkv, D], key_mask [B, Lk] bool
    (True: attend). A query whose keys are all masked gets zeros, as the kernels give it."""
    expect_float(q, "q", "attention")
    for name, t in (("out", out), ("q", q), ("k", k), ("v", v)):
        if t is not None:
            expect(t, name, 4, q.dtype)
            expect_last_contiguous(t, name)
            expect_same_device(t, q, name, "q")
    B, Lq, H, D = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    if out is not None:
        expect_shape(out, "out", q.shape)
    expect_shape(k, "k", (B, Lk, Hkv, D))
    expect_shape(v, "v", (B, Lk, Hkv, D))
    if Hkv <= 0 or H % Hkv:
        refuse(f"attention: heads {H} not divisible by kv heads {Hkv}")
    mask = None
    if key_mask is not None:
        expect(key_mask, "key_mask", 2, torch.bool)
        expect_same_device(key_mask, q, "key_mask", "q")
        expect_shape(key_mask, "key_mask", (B, Lk))
        if Lk > 1 and key_mask.stride(1) != 1:
            refuse("key_mask must be contiguous in its last dim")
        mask = key_mask[:, None, None, :]                                  # [B, 1, 1, Lk]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)    # [B, heads, L, D]
    if H != Hkv and _SDPA_HAS_GQA:
        att = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=True)
    else:
        rep = H // Hkv
        att = F.scaled_dot_product_attention(qt, kt.repeat_interleave(rep, 1), vt.repeat_interleave(rep, 1),
                                             attn_mask=mask, scale=scale)
    att = att.transpose(1, 2)                                               # [B, Lq, H, D]
    if key_mask is not None:
        att = att.masked_fill(~key_mask.any(1)[:, None, None, None], 0.0)
    if out is None:
        return att.contiguous()
    return out.copy_(att)
