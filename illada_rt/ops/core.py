"""Core ops: RMSNorm, RoPE, SwiGLU, attention, embedding and remask (kernels in csrc/*/).

Each op checks dtype, device, shape and layout, allocates its output unless one is given, and
passes raw pointers, strides and the current stream to the kernels. Shapes follow the kernel
headers in csrc/include/.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .extension import _C, _arg, _opt, _rows, _stream


def build_info() -> dict:
    """What the extension was built with (CUDA, architectures, compilers)."""
    return dict(_C.build_info())


def cuda_devices():
    """(count, reason) of CUDA devices the extension's runtime sees."""
    return tuple(_C.cuda_devices())


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None,
            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """weight * rmsnorm(x) over the last dim. With residual: residual += x first, normalise residual."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    if out.shape != x.shape or (residual is not None and residual.shape != x.shape):
        raise ValueError(f"rmsnorm: shapes differ: x {tuple(x.shape)}, out {tuple(out.shape)}"
                         + ("" if residual is None else f", residual {tuple(residual.shape)}"))
    _C.rmsnorm(_arg(_rows(out, "out"), "out"), _arg(_rows(x, "x"), "x"), _arg(weight, "weight"),
               None if residual is None else _arg(_rows(residual, "residual"), "residual"), float(eps), _stream(x))
    return out


def rope_table(head_dim: int, length: int, theta: float):
    """cos, sin tables [length, head_dim/2] float32, computed as the reference computes its angles."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return freqs.cos().contiguous(), freqs.sin().contiguous()


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, position_start: int = 0) -> torch.Tensor:
    """In-place rotate-half RoPE on x [B, L, H, head_dim] at positions position_start + l."""
    _C.rope(_arg(x, "x"), _arg(cos, "cos"), _arg(sin, "sin"), int(position_start), _stream(x))
    return x


def swiglu(gate: torch.Tensor, up: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """silu(gate) * up over [..., F] (gate and up may be strided views of one [..., 2F] tensor)."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device) if out is None else out
    _C.swiglu(_arg(_rows(out, "out"), "out"), _arg(_rows(gate, "gate"), "gate"), _arg(_rows(up, "up"), "up"),
              _stream(gate))
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None,
              out: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """Bidirectional GQA attention. q [B, Lq, H, D], k/v [B, Lk, Hkv, D], key_mask [B, Lk] bool."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device) if out is None else out
    _C.attention(_arg(out, "out"), _arg(q, "q"), _arg(k, "k"), _arg(v, "v"), _opt(key_mask, "key_mask"),
                 math.nan if scale is None else float(scale), _stream(q))
    return out


def embedding(tokens: torch.Tensor, table: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rows of table [V, d] for tokens [...] int64 -> [..., d] in the table's dtype.

    Ids outside [0, V) raise ValueError on the CPU; on CUDA their rows become NaN (see embedding.h).
    """
    if tokens.dtype != torch.int64:
        raise ValueError(f"embedding: tokens must be int64, got {tokens.dtype}")
    flat = tokens.reshape(-1)
    out = torch.empty(*tokens.shape, table.shape[-1], dtype=table.dtype, device=table.device) if out is None else out
    if out.shape != (*tokens.shape, table.shape[-1]):
        raise ValueError(f"embedding: out has shape {tuple(out.shape)}, expected {(*tokens.shape, table.shape[-1])}")
    _C.embedding(_arg(_rows(out, "out"), "out"), _arg(flat, "tokens"), _arg(table, "table"), _stream(table))
    return out


def remask_(logits: torch.Tensor, tokens: torch.Tensor, block_start: int, *, vocab: int, mask_id: int,
            seeds: torch.Tensor, row_offset: torch.Tensor, step: torch.Tensor,
            uncond: Optional[torch.Tensor] = None, cfg_scale: float = 0.0, temperature: float = 0.0,
            remasking: str = "low_confidence", k: Optional[torch.Tensor] = None,
            threshold: Optional[float] = None, x0: Optional[torch.Tensor] = None,
            conf: Optional[torch.Tensor] = None, masks_left: Optional[torch.Tensor] = None,
            workspace: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One denoising step on tokens[:, block_start : block_start + logits.shape[1]], in place.

    logits [B, Lb, >=vocab] are the block rows (uncond: the CFG branch). Exactly one of
    k [B] (top-k transfer) and threshold (confidence rule) is given. Optional outputs:
    x0 [B, Lb] int64, conf [B, Lb] float64, masks_left [B] int64. Returns tokens.

    CUDA: every tensor on the device (k, step, seeds, row_offset included); workspace is
    remask_workspace(B, Lb) (allocated here when None). Non-finite logits do not raise on
    CUDA: they set workspace[0] non-zero (sticky) and nothing is transferred; this call does
    not synchronise to check it.
    """
    if (k is None) == (threshold is None):
        raise ValueError("remask: give exactly one of k (top-k) and threshold")
    if logits.is_cuda and workspace is None and logits.dim() == 3:
        workspace = remask_workspace(logits.shape[0], logits.shape[1], logits.device)
    _C.remask(_arg(logits, "logits"), _opt(uncond, "uncond"), float(cfg_scale), int(vocab),
              _arg(tokens, "tokens"), int(block_start), int(mask_id), float(temperature),
              _arg(seeds, "seeds"), _arg(row_offset, "row_offset"), _arg(step, "step"), str(remasking),
              _opt(k, "k"), 1.0 if threshold is None else float(threshold),
              _opt(x0, "x0"), _opt(conf, "conf"), _opt(masks_left, "masks_left"), _opt(workspace, "workspace"),
              _stream(logits))
    return tokens


def remask_workspace_bytes(batch: int, block_len: int) -> int:
    """Bytes of scratch remask_ needs for a [batch, block_len] block (csrc/include/remask.h)."""
    return int(_C.remask_workspace_bytes(int(batch), int(block_len)))


def remask_workspace(batch: int, block_len: int, device) -> torch.Tensor:
    """Zeroed CUDA scratch for remask_ on a [batch, block_len] block; element 0 is the error flag."""
    return torch.zeros(-(-_C.remask_workspace_bytes(int(batch), int(block_len)) // 8), dtype=torch.int64,
                       device=device)
