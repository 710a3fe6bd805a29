"""The model's one matmul entry point: dense weights through torch, quantized ones through the kernels.

    y = linear(kernels, x, w)   x [..., K], w a dense [N, K] tensor or a QuantizedWeight -> y [..., N]

quantized_linear is the single place that chooses a quantized matmul: the op of the model's
Kernels (ops.kernels: compiled or torch twin) named in KERNELS, which computes
quant.formats.reference_linear (the plain-torch spec).

fp8 (W8A8) quantizes the activations per token. A norm that feeds an fp8 matmul can do that
itself: rmsnorm_into(kernels, next_weight, ...) returns an Fp8Activation (rmsnorm_quant_fp8), and
linear() multiplies it without quantizing again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

from .. import ops
from ..ops import Kernels
from ..quant.formats import QuantizedWeight

# format -> name of its matmul among the ops of a Kernels
KERNELS = {"int8": "int8_linear", "int4": "int4_linear", "fp8": "fp8_linear"}


def quantized_linear(kernels: Kernels, x: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """x [..., K] @ dequantize(qw).T -> [..., N] in x's dtype (see quant/formats.py for each format)."""
    kernel = getattr(kernels, KERNELS[qw.format])
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()                                   # [M, K]
    if qw.format == "int4":
        y = kernel(x2, qw.qweight, qw.scale, qw.zero, qw.group_size)
    else:
        y = kernel(x2, qw.qweight, qw.scale)
    return y.view(*lead, qw.shape[0])


@dataclass(frozen=True)
class Fp8Activation:
    """Activations already quantized per token: xq float8_e4m3fn [..., K], a_scale float32 [...]
    (x ~= xq * a_scale[..., None]); dtype: the base dtype the matmul returns."""
    xq: torch.Tensor
    a_scale: torch.Tensor
    dtype: torch.dtype


def fp8_matmul(act: Fp8Activation, qw: QuantizedWeight) -> torch.Tensor:
    """[..., N] = (xq @ qweight.T) * a_scale * scale in act.dtype: quant.formats.reference_linear after its
    activation quantization (ops.fp8_matmul)."""
    if qw.format != "fp8":
        raise ValueError(f"fp8 activations need an fp8 weight, got a {qw.format} one")
    lead, k = act.xq.shape[:-1], act.xq.shape[-1]
    xq, a_scale = act.xq.reshape(-1, k), act.a_scale.reshape(-1)
    y = ops.fp8_matmul(xq, a_scale, qw.qweight, qw.scale, act.dtype)
    return y.view(*lead, qw.shape[0])


def rmsnorm_into(kernels: Kernels, next_weight: Union[torch.Tensor, QuantizedWeight], x: torch.Tensor,
                 weight: torch.Tensor, eps: float,
                 residual: Optional[torch.Tensor] = None) -> Union[torch.Tensor, Fp8Activation]:
    """kernels.rmsnorm(x, weight, eps, residual) for a matmul with next_weight; where that is an fp8
    weight, the norm quantizes its output per token in the same pass (kernels.rmsnorm_quant_fp8)."""
    if not (isinstance(next_weight, QuantizedWeight) and next_weight.format == "fp8"):
        return kernels.rmsnorm(x, weight, eps, residual=residual)
    xq, a_scale = kernels.rmsnorm_quant_fp8(x, weight, eps, residual=residual)
    return Fp8Activation(xq, a_scale, x.dtype)


def linear(kernels: Kernels, x: Union[torch.Tensor, Fp8Activation],
           w: Union[torch.Tensor, QuantizedWeight]) -> torch.Tensor:
    """x [..., K] @ w.T for a dense weight w [N, K] or a QuantizedWeight (x may be an Fp8Activation
    from rmsnorm_into for an fp8 w)."""
    if isinstance(x, Fp8Activation):
        return fp8_matmul(x, w)
    if isinstance(w, QuantizedWeight):
        return quantized_linear(kernels, x, w)
    return F.linear(x, w)
