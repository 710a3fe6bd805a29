"""Torch twins of the elementwise families: RMSNorm (with fused residual), RoPE, SwiGLU, embedding.

Each computes what its compiled kernel computes (csrc/cpu/*.cpp), in the same precision and
rounding order, with torch ops that run on any device; signatures are those of illada_rt.ops.
"""
from __future__ import annotations

from typing import Optional

import torch

from .contract import expect, expect_float, expect_last_contiguous, expect_same_device, expect_shape, refuse


def _rows(t: torch.Tensor, name: str) -> torch.Tensor:
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        refuse(f"{name}: leading dims of shape {tuple(t.shape)} and strides {t.stride()} "
               "cannot be viewed as rows; pass a contiguous tensor")


def rmsnorm_rows(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float32 [..., D] = weight * round(src * rsqrt(mean(src^2) + eps)), the product not yet
    rounded to x's dtype; src = x, or residual after residual += x (rounded to its dtype).
    The mean square is accumulated in float64, as csrc/include/rmsnorm_row.h does."""
    if residual is not None:
        residual.add_(x)
        x = residual
    xf = x.float()
    mean_sq = xf.double().square().mean(-1, keepdim=True).float()
    inv = 1.0 / torch.sqrt(mean_sq + eps)
    return weight.float() * (xf * inv).to(x.dtype).float()


def check_rmsnorm(x, weight, residual, out) -> None:
    """The rules of ops.rmsnorm: float x [..., D], weight [D] and out/residual like x."""
    expect_float(x, "x", "rmsnorm")
    expect(weight, "weight", 1, x.dtype)
    expect_shape(weight, "weight", (x.shape[-1],))
    for name, t in (("out", out), ("weight", weight), ("residual", residual)):
        if t is not None:
            expect(t, name, t.dim(), x.dtype)
            expect_same_device(t, x, name, "x")
    if (out is not None and out.shape != x.shape) or (residual is not None and residual.shape != x.shape):
        refuse(f"rmsnorm: shapes differ: x {tuple(x.shape)}"
               + ("" if out is None else f", out {tuple(out.shape)}")
               + ("" if residual is None else f", residual {tuple(residual.shape)}"))
    for name, t in (("x", x), ("out", out), ("residual", residual)):
        if t is not None:
            _rows(t, name)
            expect_last_contiguous(t, "rmsnorm operand")


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None,
            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """weight * rmsnorm(x) over the last dim. With residual: residual += x first, normalise residual."""
    check_rmsnorm(x, weight, residual, out)
    y = rmsnorm_rows(x, weight, float(eps), residual).to(x.dtype)
    if out is None:
        return y
    return out.copy_(y)


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, position_start: int = 0) -> torch.Tensor:
    """In-place rotate-half RoPE on x [B, L, H, head_dim] at positions position_start + l:
    lo = x1 * c + (-x2 * s), hi = x2 * c + x1 * s in float32 (csrc/cpu/rope.cpp's order)."""
    expect_float(x, "x", "rope")
    if x.dim() != 4:
        refuse(f"x must have 4 dims, got {x.dim()}")
    expect_last_contiguous(x, "x")
    if x.shape[3] % 2:
        refuse(f"rope: head_dim must be even, got {x.shape[3]}")
    half = x.shape[3] // 2
    for t in (cos, sin):
        expect(t, "cos/sin table", 2, torch.float32)
        expect_same_device(t, x, "cos/sin table", "x")
        if t.shape[1] != half or t.stride(1) != 1 or t.stride(0) != half:
            refuse("rope: cos/sin tables must be contiguous [positions, head_dim/2]")
    expect_shape(sin, "sin", cos.shape)
    start, length = int(position_start), x.shape[1]
    if start < 0 or start + length > cos.shape[0]:
        refuse(f"rope: positions {start}..{start + length} exceed the table of {cos.shape[0]}")
    c = cos[start:start + length][None, :, None, :]                  # [1, L, 1, hd/2]
    s = sin[start:start + length][None, :, None, :]
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    lo = x1 * c + (-x2) * s
    hi = x2 * c + x1 * s
    x[..., :half].copy_(lo)
    x[..., half:].copy_(hi)
    return x


def swiglu(gate: torch.Tensor, up: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """silu(gate) * up over [..., F]: round(round(g / (1 + exp(-g))) * up) in float32."""
    if gate.shape != up.shape:
        refuse(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    expect_float(gate, "inputs", "swiglu")
    for t in (up, out):
        if t is not None:
            expect(t, "swiglu operand", t.dim(), gate.dtype)
            expect_shape(t, "swiglu operand", gate.shape)
            expect_same_device(t, gate, "swiglu operand", "gate")
    for name, t in (("out", out), ("gate", gate), ("up", up)):
        if t is not None:
            expect_last_contiguous(_rows(t, name), "swiglu operand")
    g = gate.float()
    act = (g / (1.0 + torch.exp(-g))).to(gate.dtype).float()
    y = (act * up.float()).to(gate.dtype)
    return y if out is None else out.copy_(y)


def embedding(tokens: torch.Tensor, table: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rows of table [V, d] for tokens [...] int64 -> [..., d] in the table's dtype.

    Ids outside [0, V) give NaN rows on every device, as the CUDA kernel does (no host read; the
    compiled CPU kernel raises ValueError instead).
    """
    if tokens.dtype != torch.int64:
        refuse(f"embedding: tokens must be int64, got {tokens.dtype}")
    if table.dim() != 2 or table.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        refuse("embedding: table must be a 2-D float32, bfloat16 or float16 tensor")
    expect_last_contiguous(table, "table")
    expect_same_device(tokens, table, "tokens", "table")
    shape = (*tokens.shape, table.shape[-1])
    if out is not None:
        if tuple(out.shape) != shape:
            refuse(f"embedding: out has shape {tuple(out.shape)}, expected {shape}")
        expect(out, "out", out.dim(), table.dtype)
        expect_same_device(out, table, "out", "table")
        expect_last_contiguous(out, "out")
    vocab = table.shape[0]
    flat = tokens.reshape(-1)
    outside = (flat < 0) | (flat >= vocab)
    rows = table.index_select(0, flat.clamp(0, max(vocab - 1, 0))).masked_fill(outside[:, None], float("nan"))
    rows = rows.view(shape)
    return rows if out is None else out.copy_(rows)
