"""The only module that imports the compiled extension ``illada_rt._C``, and how tensors reach it.

A tensor crosses as a TensorArg (pointer, dtype code, shape, strides, device); _stream gives
the current CUDA stream of a tensor's device. The op modules (core.py, quant.py) build on this.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

# The extension's OpenMP threads sleep, rather than spin, between kernels: torch's own
# thread pool runs the matmuls in between and spinning threads would starve it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    from .. import _C
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "illada_rt._C, the compiled extension, is missing or failed to load "
        f"({e}). Build it with `pip install -e .` from the source tree."
    ) from e

_DTYPE_CODES = {
    torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.int64: 3,
    torch.int32: 4, torch.bool: 5, torch.float64: 6,
    torch.int8: 7, torch.uint8: 8, torch.float8_e4m3fn: 9,
}
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _arg(t: torch.Tensor, name: str):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    code = _DTYPE_CODES.get(t.dtype)
    if code is None:
        raise ValueError(f"{name}: dtype {t.dtype} is not supported")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: device {t.device} is not supported")
    return _C.TensorArg(t.data_ptr(), code, list(t.shape), list(t.stride()), t.is_cuda)


def _opt(t: Optional[torch.Tensor], name: str):
    return None if t is None else _arg(t, name)


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


def _rows(t: torch.Tensor, name: str) -> torch.Tensor:
    """[..., D] -> a [rows, D] view (no copy); the leading dims must collapse."""
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        raise ValueError(f"{name}: leading dims of shape {tuple(t.shape)} and strides {t.stride()} "
                         "cannot be viewed as rows; pass a contiguous tensor") from None
