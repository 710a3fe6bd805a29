"""Argument checks of the quantized-weight ops, shared by the compiled ops (quant.py) and their
torch twins (native/quant.py): both accept the same calls and refuse the rest alike."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_tensor(t, name: str, dtype=None, dim=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dims, got shape {tuple(t.shape)}")


def check_x(x, k: int, name: str = "x"):
    check_tensor(x, name)
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; its last dim must be the weight's K = {k}")


def check_same_device(x, *others):
    for name, t in others:
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def int_weight(qweight, scale, zero, group_size, bits: int):
    """Check an int8 / int4 weight; return (N, K)."""
    check_tensor(qweight, "qweight", torch.int8 if bits == 8 else torch.uint8, 2)
    if bits == 8:
        check_tensor(scale, "scale", torch.float32, 1)
        if scale.shape[0] != qweight.shape[0]:
            raise ValueError(f"scale has shape {tuple(scale.shape)}, expected [{qweight.shape[0]}]")
        return qweight.shape[0], qweight.shape[1]
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    if not isinstance(group_size, int) or group_size <= 0 or group_size % 2 or k % group_size:
        raise ValueError(f"group_size {group_size!r} must be a positive even divisor of K = {k}")
    check_tensor(scale, "scale", torch.float32, 2)
    if tuple(scale.shape) != (n, k // group_size):
        raise ValueError(f"scale has shape {tuple(scale.shape)}, expected [{n}, {k // group_size}]")
    if zero is not None:
        check_tensor(zero, "zero", torch.float32, 2)
        if zero.shape != scale.shape:
            raise ValueError(f"zero has shape {tuple(zero.shape)}, expected {tuple(scale.shape)}")
    return n, k




def dequant_out(qweight, scale, zero, group_size, dtype, bits: int, out):
    """Check a dequantize call; return out (allocated [N, K] of dtype when None)."""
    n, k = int_weight(qweight, scale, zero, group_size, bits)
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    check_same_device(qweight, ("scale", scale), ("zero", zero), ("out", out))
    if out is None:
        return torch.empty(n, k, dtype=dtype, device=qweight.device)
    check_tensor(out, "out", dtype, 2)
    if tuple(out.shape) != (n, k):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected [{n}, {k}]")
    return out


def int_linear_out(x, qweight, scale, zero, group_size, bits: int, out, path: str, paths):
    """Check an int8 / int4 linear call; return (K, out) with out [..., N] allocated when None."""
    if path not in paths:
        raise ValueError(f"path must be one of {paths}, got {path!r}")
    n, k = int_weight(qweight, scale, zero, group_size, bits)
    check_x(x, k)
    check_same_device(x, ("qweight", qweight), ("scale", scale), ("zero", zero), ("out", out))
    lead = x.shape[:-1]
    if out is None:
        return k, torch.empty(*lead, n, dtype=x.dtype, device=x.device)
    check_tensor(out, "out", x.dtype)
    if tuple(out.shape) != (*lead, n):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {(*lead, n)}")
    return k, out


def check_fp8_input(x):
    check_tensor(x, "x")
    if x.dtype not in FLOAT_DTYPES or x.dim() < 1:
        raise ValueError(f"x must be a float32, bfloat16 or float16 tensor [..., K], got {x.dtype} {tuple(x.shape)}")


def check_norm_weight(x, weight, residual):
    """The RMSNorm operands of rmsnorm_quant_fp8: weight [K] and residual like x."""
    check_tensor(weight, "weight", x.dtype, 1)
    if weight.shape[0] != x.shape[-1]:
        raise ValueError(f"weight has shape {tuple(weight.shape)}, expected [{x.shape[-1]}]")
    if residual is not None:
        check_tensor(residual, "residual", x.dtype)
        if residual.shape != x.shape:
            raise ValueError(f"residual has shape {tuple(residual.shape)}, expected {tuple(x.shape)}")
    check_same_device(x, ("weight", weight), ("residual", residual))


def fp8_rows_out(x, out):
    """Check (or allocate) the (xq float8_e4m3fn [..., K], a_scale float32 [...]) outputs for x."""
    lead = x.shape[:-1]
    if out is None:
        return (torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device),
                torch.empty(lead, dtype=torch.float32, device=x.device))
    xq, a_scale = out
    check_tensor(xq, "xq", torch.float8_e4m3fn)
    check_tensor(a_scale, "a_scale", torch.float32)
    if xq.shape != x.shape or a_scale.shape != lead:
        raise ValueError(f"out: xq {tuple(xq.shape)} and a_scale {tuple(a_scale.shape)} must be "
                         f"{tuple(x.shape)} and {tuple(lead)}")
    check_same_device(x, ("xq", xq), ("a_scale", a_scale))
    if not a_scale.is_contiguous():
        raise ValueError("a_scale must be contiguous")
    return xq, a_scale


def fp8_weight(x, qweight, scale):
    """Check an fp8 linear's weight [N, K] float8_e4m3fn and scale [N] against x; return (N, K)."""
    check_tensor(qweight, "qweight", torch.float8_e4m3fn, 2)
    check_tensor(scale, "scale", torch.float32, 1)
    n, k = qweight.shape
    check_x(x, k)
    if scale.shape[0] != n:
        raise ValueError(f"scale has shape {tuple(scale.shape)}, expected [{n}]")
    check_same_device(x, ("qweight", qweight), ("scale", scale))
    return n, k
