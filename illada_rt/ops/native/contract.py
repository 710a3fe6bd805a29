"""The argument rules of the compiled bindings (csrc/bind/tensor_arg.h), for the torch twins.

A twin accepts exactly what its compiled op accepts and refuses the rest with a ValueError
worded like the binding's, before it writes anything: which implementation runs an op never
changes which calls are valid.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16", torch.int64: "int64",
          torch.int32: "int32", torch.bool: "bool", torch.float64: "float64", torch.int8: "int8",
          torch.uint8: "uint8", torch.float8_e4m3fn: "float8_e4m3fn"}


def refuse(message: str):
    raise ValueError(message)


def expect(t, name: str, ndim: int, dtype: torch.dtype) -> None:
    """t is a tensor of `ndim` dims and element type `dtype`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        refuse(f"{name} must have {ndim} dims, got {t.dim()}")
    if t.dtype != dtype:
        refuse(f"{name} must be {_NAMES.get(dtype, dtype)}, got {_NAMES.get(t.dtype, t.dtype)}")


def expect_float(t, name: str, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        refuse(f"{op}: {name} must be float32, bfloat16 or float16")


def expect_last_contiguous(t: torch.Tensor, name: str) -> None:
    if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        refuse(f"{name} must be contiguous in its last dim")


def expect_shape(t: torch.Tensor, name: str, shape: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(shape):
        refuse(f"{name} has the wrong shape")


def expect_same_device(a: Optional[torch.Tensor], b: torch.Tensor, an: str, bn: str) -> None:
    if a is not None and a.device != b.device:
        refuse(f"{an} and {bn} must be on the same device")


def expect_vector(t, name: str, length: int, device_of: torch.Tensor, dtype: torch.dtype = torch.int64) -> None:
    """A contiguous 1-D `dtype` tensor of `length` on device_of's device."""
    expect(t, name, 1, dtype)
    expect_same_device(t, device_of, name, "logits")
    expect_shape(t, name, (length,))
    if length > 1 and t.stride(0) != 1:
        refuse(f"{name} must be contiguous")
