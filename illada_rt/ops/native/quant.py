"""Torch twins of the quantized-weight families: dequantize and the int8 / int4 matmuls
(family "quant"), fp8 activation quantization alone or fused into RMSNorm (family "fp8").

The formats are illada_rt/quant/formats.py's; each twin computes what its compiled op computes
(int8/int4: dequantize in float32, round to x's dtype, torch's matmul, as the compiled "dequant"
path does; fp8: the per-token scale and a saturating e4m3 cast) and checks its arguments with the
same rules (quant_checks.py).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..quant_checks import (check_fp8_input, check_norm_weight, dequant_out, fp8_rows_out, fp8_weight,
                            int_linear_out)
from ..quant import INT_LINEAR_PATHS, fp8_matmul, require_fp8_gpu
from .elementwise import check_rmsnorm, rmsnorm_rows

FP8_MAX = 448.0        # largest finite float8_e4m3fn
_TINY = 1e-12          # activation scale floor (formats._TINY)


def _dequantize_f32(qweight, scale, zero, group_size, bits: int) -> torch.Tensor:
    """The float32 weight [N, K] of an int8 or int4 code matrix."""
    if bits == 8:
        return qweight.float() * scale[:, None]
    n, half = qweight.shape
    k = 2 * half
    codes = torch.stack([qweight & 15, qweight >> 4], 2).view(n, k).float()          # k even: low nibble
    z = 8.0 if zero is None else zero[..., None]
    return ((codes.view(n, k // group_size, group_size) - z) * scale[..., None]).view(n, k)


def _dequantize(qweight, scale, zero, group_size, dtype, bits: int, out=None) -> torch.Tensor:
    out = dequant_out(qweight, scale, zero, group_size, dtype, bits, out)
    return out.copy_(_dequantize_f32(qweight, scale, zero, group_size, bits))


def dequantize_int8(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32,
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """w [N, K] = qweight int8 [N, K] * scale float32 [N], computed in float32, rounded to dtype."""
    return _dequantize(qweight, scale, None, 0, dtype, 8, out)


def dequantize_int4(qweight: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor], group_size: int,
                    dtype: torch.dtype = torch.float32, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """w [N, K] = (code - zero) * scale per group of group_size inputs (qweight uint8 [N, K/2])."""
    return _dequantize(qweight, scale, zero, group_size, dtype, 4, out)


def _int_linear(x, qweight, scale, zero, group_size, bits: int, out, path: str) -> torch.Tensor:
    k, out = int_linear_out(x, qweight, scale, zero, group_size, bits, out, path, INT_LINEAR_PATHS)
    if path == "kernel":
        raise ValueError(f"path='kernel': the torch implementation of the int{bits} matmul has no kernel "
                         "(it dequantizes, then multiplies); use path='auto' or 'dequant', or kernels='custom'")
    w = _dequantize_f32(qweight, scale, zero, group_size, bits).to(x.dtype)
    torch.matmul(x.reshape(-1, k), w.t(), out=out.view(-1, out.shape[-1]))
    return out


def int8_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                out: Optional[torch.Tensor] = None, path: str = "auto") -> torch.Tensor:
    """x [..., K] @ (qweight int8 [N, K] * scale [N]).T -> [..., N] in x's dtype."""
    return _int_linear(x, qweight, scale, None, 0, 8, out, path)


def int4_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor],
                group_size: int, out: Optional[torch.Tensor] = None, path: str = "auto") -> torch.Tensor:
    """x [..., K] @ dequantize_int4(...).T -> [..., N] in x's dtype (qweight uint8 [N, K/2])."""
    return _int_linear(x, qweight, scale, zero, group_size, 4, out, path)


def saturating_fp8(x: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn of x, round to nearest even, |x| >= 448 (infinities too) to +-448, NaN kept:
    the kernels' conversion. torch before 2.12 does not saturate (above 464 gives NaN), so clamp."""
    return x.float().clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def _quantize_rows(h: torch.Tensor, out) -> tuple:
    """h float32 [..., K] -> (xq, a_scale) written into out: a_scale = max(max|h| / 448, 1e-12)."""
    xq, a_scale = out
    scale = (h.abs().amax(-1) / FP8_MAX).clamp_min(_TINY)       # a NaN row keeps a NaN scale, as torch's amax
    a_scale.copy_(scale)
    xq.copy_(saturating_fp8(h / scale[..., None]))
    return xq, a_scale


def quantize_fp8_per_token(x: torch.Tensor, out: Optional[tuple] = None):
    """x [..., K] -> (xq float8_e4m3fn [..., K], a_scale float32 [...]), as formats.quantize_activation_fp8."""
    check_fp8_input(x)
    return _quantize_rows(x.float(), fp8_rows_out(x, out))


def rmsnorm_quant_fp8(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None,
                      out: Optional[tuple] = None):
    """quantize_fp8_per_token(rmsnorm(x, weight, eps, residual)); residual += x first. The normalised
    row is rounded to x's dtype, as rmsnorm rounds it."""
    check_fp8_input(x)
    check_norm_weight(x, weight, residual)
    check_rmsnorm(x, weight, residual, None)
    out = fp8_rows_out(x, out)
    h = rmsnorm_rows(x, weight, float(eps), residual).to(x.dtype).float()
    return _quantize_rows(h, out)


def cast_to_fp8(x: torch.Tensor) -> torch.Tensor:
    """x.to(torch.float8_e4m3fn) with the kernels' rounding (saturating)."""
    check_fp8_input(x)
    return saturating_fp8(x)


def fp8_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., K] -> per-token fp8 activations -> fp8 matmul with qweight [N, K] -> [..., N] in x's dtype."""
    fp8_weight(x, qweight, scale)
    if x.is_cuda:
        require_fp8_gpu(x.device)
    xq, a_scale = quantize_fp8_per_token(x)
    return fp8_matmul(xq, a_scale, qweight, scale, x.dtype)
