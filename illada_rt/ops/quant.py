"""Quantized-weight ops: dequantize, int8/int4 matmuls, fp8 activations and matmuls."""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

from .extension import _C, _arg, _opt, _rows, _stream
from .quant_checks import (FLOAT_DTYPES, check_fp8_input, check_norm_weight, check_same_device, check_tensor,
                           dequant_out, fp8_rows_out, fp8_weight, int_linear_out)


# ---------------------------------------------------------------------------------------------
# Quantized matmuls (formats in illada_rt/quant/formats.py; kernels in csrc/*/quant_*).
#   int8 / int4 weight-only: y = x @ dequantize(w).T in x's dtype. Two paths (`path=`):
#     "kernel"   CUDA, bf16/fp16 x: one compiled kernel reads the packed weight and multiplies on
#                tensor cores (fp32 accumulation); built for small M (block-only steps)
#     "dequant"  dequantize to x's dtype with the compiled kernel, then torch's matmul (cuBLAS on
#                CUDA): large M, float32 x, shapes the kernel does not take, the CPU
#     "auto"     the kernel where it takes the call and M <= QUANT_MATMUL_MAX_M, else dequant.
#   QUANT_MATMUL_MAX_M is 64 unless ILLADA_QUANT_MATMUL_MAX_M says otherwise (read at import);
#   bench/bench_quant_matmul.py times both paths at each M and prints the crossover.
#   fp8 (W8A8): per-token fp8 activations (compiled), then torch._scaled_mm with row-wise scales
#   on CUDA (compute capability >= 8.9) or a float32 matmul of the fp8 values on the CPU.
# ---------------------------------------------------------------------------------------------
QUANT_KERNEL_MAX_M = int(_C.QUANT_KERNEL_MAX_M)   # the most rows one kernel launch takes
INT_LINEAR_PATHS = ("auto", "kernel", "dequant")


def _max_m_from_env(name: str = "ILLADA_QUANT_MATMUL_MAX_M", default: int = 64) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= QUANT_KERNEL_MAX_M:
        raise ValueError(f"{name}={raw!r}: expected a row count from 0 to {QUANT_KERNEL_MAX_M}")
    return value


QUANT_MATMUL_MAX_M = _max_m_from_env()
_FP8_MIN_CAPABILITY = (8, 9)


def _dequantize(qweight, scale, zero, group_size, dtype, bits: int, out=None) -> torch.Tensor:
    out = dequant_out(qweight, scale, zero, group_size, dtype, bits, out)
    qweight, scale = qweight.contiguous(), scale.contiguous()
    zero = None if zero is None else zero.contiguous()
    _C.dequantize(_arg(out, "out"), _arg(qweight, "qweight"), _arg(scale, "scale"), _opt(zero, "zero"),
                  int(group_size) if bits == 4 else 0, _stream(qweight))
    return out


def dequantize_int8(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32,
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """w [N, K] = qweight int8 [N, K] * scale float32 [N], computed in float32, rounded to dtype."""
    return _dequantize(qweight, scale, None, 0, dtype, 8, out)


def dequantize_int4(qweight: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor], group_size: int,
                    dtype: torch.dtype = torch.float32, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """w [N, K] = (code - zero) * scale per group of group_size inputs (qweight uint8 [N, K/2])."""
    return _dequantize(qweight, scale, zero, group_size, dtype, 4, out)


def _kernel_refusal(x2: torch.Tensor, qweight: torch.Tensor, k: int, group_size: int, bits: int):
    """Why the compiled CUDA matmul kernel cannot take this call (its requirements in
    quant_matmul.h), or None when it can. Checked in order, the message built only on failure."""
    if not x2.is_cuda:
        return "x is not on a CUDA device"
    if x2.dtype not in (torch.bfloat16, torch.float16):
        return f"x is {x2.dtype}, not bfloat16 or float16"
    if not 0 < x2.shape[0] <= QUANT_KERNEL_MAX_M:
        return f"{x2.shape[0]} rows (it takes 1 to {QUANT_KERNEL_MAX_M})"
    align = _C.quant_matmul_k_align(bits)
    if k % align:
        return f"K = {k} is not a multiple of {align}"
    if bits == 4 and group_size % 32:
        return f"group_size {group_size} is not a multiple of 32"
    if x2.stride(1) != 1 or x2.stride(0) % 8 or x2.data_ptr() % 16:
        return "x rows are not 16-byte aligned"
    if not qweight.is_contiguous() or qweight.data_ptr() % 16:
        return "qweight is not contiguous and 16-byte aligned"
    return None


def _int_linear(x, qweight, scale, zero, group_size, bits: int, out=None, path: str = "auto") -> torch.Tensor:
    k, out = int_linear_out(x, qweight, scale, zero, group_size, bits, out, path, INT_LINEAR_PATHS)
    x2, y = x.reshape(-1, k), _rows(out, "out")
    use_kernel = False
    if path == "kernel" or (path == "auto" and x2.shape[0] <= QUANT_MATMUL_MAX_M):
        refusal = _kernel_refusal(x2, qweight, k, group_size, bits)
        if path == "kernel" and refusal:
            raise ValueError(f"path='kernel': the compiled int{bits} matmul cannot take this call: {refusal}")
        use_kernel = refusal is None
    if use_kernel:
        scale = scale.contiguous()
        zero = None if zero is None else zero.contiguous()
        _C.quant_matmul(_arg(y, "out"), _arg(x2, "x"), _arg(qweight, "qweight"), _arg(scale, "scale"),
                        _opt(zero, "zero"), int(group_size) if bits == 4 else 0, _stream(x))
    else:
        torch.matmul(x2, _dequantize(qweight, scale, zero, group_size, x.dtype, bits).t(), out=y)
    return out


def int8_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                out: Optional[torch.Tensor] = None, path: str = "auto") -> torch.Tensor:
    """x [..., K] @ (qweight int8 [N, K] * scale [N]).T -> [..., N] in x's dtype (written to out if given).
    path: "auto", "kernel" or "dequant" (see the top of this module)."""
    return _int_linear(x, qweight, scale, None, 0, 8, out, path)


def int4_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor],
                group_size: int, out: Optional[torch.Tensor] = None, path: str = "auto") -> torch.Tensor:
    """x [..., K] @ dequantize_int4(...).T -> [..., N] in x's dtype (qweight uint8 [N, K/2]).
    path: "auto", "kernel" or "dequant" (see the top of this module)."""
    return _int_linear(x, qweight, scale, zero, group_size, 4, out, path)


def _quantize_fp8(x, weight, residual, eps, out) -> tuple:
    x2 = _rows(x, "x")
    xq, a_scale = fp8_rows_out(x, out)
    _C.quantize_fp8(_arg(_rows(xq, "xq"), "xq"), _arg(a_scale.view(-1), "a_scale"), _arg(x2, "x"),
                    _opt(weight, "weight"),
                    None if residual is None else _arg(_rows(residual, "residual"), "residual"), float(eps),
                    _stream(x))
    return xq, a_scale


def quantize_fp8_per_token(x: torch.Tensor, out: Optional[tuple] = None):
    """x [..., K] -> (xq float8_e4m3fn [..., K], a_scale float32 [...]), as formats.quantize_activation_fp8.

    out: optional (xq, a_scale) to write into (for fixed buffers).
    """
    check_fp8_input(x)
    return _quantize_fp8(x, None, None, 0.0, out)


def rmsnorm_quant_fp8(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None,
                      out: Optional[tuple] = None):
    """(xq, a_scale) = quantize_fp8_per_token(rmsnorm(x, weight, eps, residual)), fused; residual += x first.

    The normalised row is rounded to x's dtype exactly as ops.rmsnorm rounds it; out as in
    quantize_fp8_per_token.
    """
    check_fp8_input(x)
    check_norm_weight(x, weight, residual)
    return _quantize_fp8(x, weight, residual, eps, out)


def cast_to_fp8(x: torch.Tensor) -> torch.Tensor:
    """x.to(torch.float8_e4m3fn) through the compiled conversion (the kernels' rounding, for tests)."""
    check_fp8_input(x)
    flat = x.contiguous().view(-1)
    out = torch.empty(flat.shape, dtype=torch.float8_e4m3fn, device=x.device)
    _C.cast_fp8(_arg(out, "out"), _arg(flat, "x"), _stream(x))
    return out.view(x.shape)


def require_fp8_gpu(device: torch.device) -> None:
    cap = torch.cuda.get_device_capability(device)
    if cap < _FP8_MIN_CAPABILITY:
        raise RuntimeError(f"fp8 weights need a GPU of compute capability >= 8.9 for fp8 matmuls; "
                           f"{torch.cuda.get_device_name(device)} is {cap[0]}.{cap[1]}. "
                           "Use the int8 or int4 format on this GPU.")


# Devices (torch.device) on which this torch has no row-wise fp8 GEMM: torch builds without its
# CUTLASS row-wise kernel for an architecture raise on the first call, and later calls go straight
# to the tensor-wise fallback in _fp8_gemm (a warning says so once per device).
_NO_ROWWISE_FP8 = set()


def _fp8_gemm(xq: torch.Tensor, qweight: torch.Tensor, a_scale: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[M, K] fp8 @ ([N, K] fp8).T with per-row scales a_scale [M, 1] and per-column scales scale [N].

    Row-wise torch._scaled_mm applies both scales in the GEMM epilogue (bfloat16 result). Where
    torch lacks that kernel, a tensor-wise _scaled_mm with unit scales gives the float32 product
    and the scales are applied after it (one more elementwise pass; float32 result)."""
    n = qweight.shape[0]
    if xq.device not in _NO_ROWWISE_FP8:
        try:
            return torch._scaled_mm(xq, qweight.t(), scale_a=a_scale, scale_b=scale.contiguous().view(1, n),
                                    out_dtype=torch.bfloat16)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:
            _NO_ROWWISE_FP8.add(xq.device)
            warnings.warn(f"torch._scaled_mm has no row-wise fp8 GEMM on {xq.device} ({e}); fp8 matmuls "
                          "there use a tensor-wise fp8 GEMM and apply the scales after it", RuntimeWarning)
    unit = torch.ones((), dtype=torch.float32, device=xq.device)
    y = torch._scaled_mm(xq, qweight.t(), scale_a=unit, scale_b=unit, out_dtype=torch.float32)
    return y.mul_(a_scale).mul_(scale)


def fp8_matmul(xq: torch.Tensor, a_scale: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
               out_dtype: torch.dtype) -> torch.Tensor:
    """y [..., N] = (xq [..., K] @ qweight [N, K].T) * a_scale[..., None] * scale, in out_dtype.

    xq, a_scale: per-token fp8 activations (quantize_fp8_per_token / rmsnorm_quant_fp8).
    CUDA: torch._scaled_mm with row-wise scales (bfloat16 result, cast to out_dtype; see _fp8_gemm
    for torch builds without that kernel), which needs compute capability >= 8.9 and K, N
    multiples of 16 (other shapes use the float32 matmul below).
    CPU: float32 matmul of the fp8 values, then the scales, as formats.reference_linear.
    """
    check_tensor(xq, "xq", torch.float8_e4m3fn)
    check_tensor(a_scale, "a_scale", torch.float32)
    check_tensor(qweight, "qweight", torch.float8_e4m3fn, 2)
    check_tensor(scale, "scale", torch.float32, 1)
    n, k = qweight.shape
    if xq.dim() < 1 or xq.shape[-1] != k or a_scale.shape != xq.shape[:-1] or scale.shape[0] != n:
        raise ValueError(f"fp8_matmul: shapes disagree: xq {tuple(xq.shape)}, a_scale {tuple(a_scale.shape)}, "
                         f"qweight {tuple(qweight.shape)}, scale {tuple(scale.shape)}")
    if out_dtype not in FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be float32, bfloat16 or float16, got {out_dtype}")
    check_same_device(xq, ("a_scale", a_scale), ("qweight", qweight), ("scale", scale))
    lead = xq.shape[:-1]
    xq2, a2 = xq.reshape(-1, k), a_scale.reshape(-1, 1)
    m = xq2.shape[0]
    if xq.is_cuda:
        require_fp8_gpu(xq.device)
        if k % 16 == 0 and n % 16 == 0 and m > 0:
            return _fp8_gemm(xq2.contiguous(), qweight.contiguous(), a2.contiguous(), scale).to(out_dtype).view(*lead, n)
    y = (xq2.float() @ qweight.float().t()) * a2 * scale[None, :]
    return y.to(out_dtype).view(*lead, n)


def fp8_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., K] -> per-token fp8 activations -> fp8 matmul with qweight [N, K] -> [..., N] in x's dtype."""
    fp8_weight(x, qweight, scale)
    if x.is_cuda:
        require_fp8_gpu(x.device)                       # before any work
    xq, a_scale = quantize_fp8_per_token(x.contiguous())
    return fp8_matmul(xq, a_scale, qweight, scale, x.dtype)
