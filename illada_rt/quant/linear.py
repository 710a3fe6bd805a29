"""The model's one matmul entry point: dense weights through torch, quantized ones through the kernels.

    y = linear(x, w)      x [..., K], w a dense [N, K] tensor or a QuantizedWeight -> y [..., N]

quantized_linear is the single place that chooses a quantized matmul: the compiled kernel of
illada_rt.ops where the extension has one for the format, otherwise the plain-torch spec
(formats.reference_linear, dequantize + matmul; fp8 emulated). Both compute the same thing.
"""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F

from .. import ops
from .formats import QuantizedWeight, reference_linear

# format -> name of its matmul in illada_rt.ops
KERNELS = {"int8": "int8_linear", "int4": "int4_linear", "fp8": "fp8_linear"}


def kernel_for(fmt: str):
    """The compiled matmul for `fmt`, or None where this build has none."""
    return getattr(ops, KERNELS[fmt], None)


def quantized_linear(x: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """x [..., K] @ dequantize(qw).T -> [..., N] in x's dtype (see formats.py for each format)."""
    kernel = kernel_for(qw.format)
    if kernel is None:
        return reference_linear(x, qw)
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()                                   # [M, K]
    if qw.format == "int4":
        y = kernel(x2, qw.qweight, qw.scale, qw.zero, qw.group_size)
    else:
        y = kernel(x2, qw.qweight, qw.scale)
    return y.view(*lead, qw.shape[0])


def linear(x: torch.Tensor, w: Union[torch.Tensor, QuantizedWeight]) -> torch.Tensor:
    """x [..., K] @ w.T for a dense weight w [N, K] or a QuantizedWeight."""
    if isinstance(w, QuantizedWeight):
        return quantized_linear(x, w)
    return F.linear(x, w)
