"""The quantized weight formats, with plain-torch quantize / dequantize / matmul as their spec.

A linear weight w [N, K] (N outputs, K inputs) is stored as one of:

  int8  weight-only, per output channel:  qweight int8 [N, K],  scale float32 [N]
        w[n, k] ~= qweight[n, k] * scale[n]                 (symmetric, q in [-127, 127])
  int4  weight-only, groups of G inputs:  qweight uint8 [N, K / 2] (two 4-bit codes a byte:
        k even in the low nibble, k odd in the high one), scale float32 [N, K / G],
        zero float32 [N, K / G] or None (None: 8, the symmetric code)
        w[n, k] ~= (code[n, k] - zero[n, k // G]) * scale[n, k // G]      (codes in [0, 15])
  fp8   float8_e4m3fn [N, K], scale float32 [N]; activations are quantized per token at
        run time (W8A8): a_scale[m] = max|x[m, :]| / 448, xq = e4m3(x / a_scale)
        y[m, n] = sum_k xq[m, k] * qweight[n, k] * a_scale[m] * scale[n]

The compiled kernels (illada_rt.ops) must agree with reference_linear below.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

FORMATS = ("int8", "int4", "fp8")
FP8_MAX = 448.0            # largest finite float8_e4m3fn
_TINY = 1e-12              # scale floor: an all-zero row or group quantizes to zeros
ROW_CHUNK = 4096           # rows quantized at a time (a few float32 copies of this many rows live at once)


@dataclass(frozen=True)
class QuantizedWeight:
    format: str
    qweight: torch.Tensor             # see the module docstring, per format
    scale: torch.Tensor               # float32 [N] (int8, fp8) or [N, K / G] (int4)
    zero: Optional[torch.Tensor] = None   # int4 only: float32 [N, K / G], None for symmetric
    group_size: int = 0               # int4 only

    @property
    def shape(self):
        n, k = self.qweight.shape
        return (n, 2 * k) if self.format == "int4" else (n, k)

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    @property
    def nbytes(self) -> int:
        """Bytes held: codes, scales and zero points."""
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scale, self.zero) if t is not None)

    def parts(self):
        """(part name, tensor) as stored in a quantized checkpoint: qweight, scale, zero (int4 with zeros)."""
        yield "qweight", self.qweight
        yield "scale", self.scale
        if self.zero is not None:
            yield "zero", self.zero

    def to(self, device) -> "QuantizedWeight":
        move = (lambda t: None if t is None else t.to(device))
        return QuantizedWeight(self.format, move(self.qweight), move(self.scale), move(self.zero), self.group_size)


def stored_parts(fmt: str, n: int, k: int, group_size: int = 0, zero_point: bool = True):
    """part name -> (shape, dtype) of a weight [N, K] stored in `fmt` (QuantizedWeight.parts)."""
    if fmt == "int8":
        return {"qweight": ((n, k), torch.int8), "scale": ((n,), torch.float32)}
    if fmt == "fp8":
        return {"qweight": ((n, k), torch.float8_e4m3fn), "scale": ((n,), torch.float32)}
    parts = {"qweight": ((n, k // 2), torch.uint8), "scale": ((n, k // group_size), torch.float32)}
    if zero_point:
        parts["zero"] = ((n, k // group_size), torch.float32)
    return parts


def quantize_weight(w: torch.Tensor, fmt: str, group_size: int = 128, zero_point: bool = True) -> QuantizedWeight:
    """Quantize w [N, K] (any float dtype; computed in float32) to `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown quantization format {fmt!r}; choose one of {FORMATS}")
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"quantize_weight: expected a 2-D float weight, got {tuple(w.shape)} {w.dtype}")
    if w.shape[0] > ROW_CHUNK:   # every format is per row: chunks bound the float32 temporaries
        return cat_rows([quantize_weight(w[i:i + ROW_CHUNK], fmt, group_size, zero_point)
                         for i in range(0, w.shape[0], ROW_CHUNK)])
    w = w.float()
    n, k = w.shape
    if fmt == "int8":
        scale = (w.abs().amax(1) / 127).clamp_min(_TINY)                      # [N]
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return QuantizedWeight("int8", q, scale)
    if fmt == "fp8":
        scale = (w.abs().amax(1) / FP8_MAX).clamp_min(_TINY)                  # [N]
        return QuantizedWeight("fp8", (w / scale[:, None]).to(torch.float8_e4m3fn), scale)
    if group_size <= 0 or group_size % 2 or k % group_size:
        raise ValueError(f"int4: group_size {group_size} must be even and divide the input dim {k}")
    g = w.view(n, k // group_size, group_size)                                 # [N, K/G, G]
    if zero_point:
        lo, hi = g.amin(2).clamp(max=0), g.amax(2).clamp(min=0)               # the range holds 0 exactly
        scale = ((hi - lo) / 15).clamp_min(_TINY)                              # [N, K/G]
        zero = torch.round(-lo / scale).clamp_(0, 15)
    else:
        scale = (g.abs().amax(2) / 7).clamp_min(_TINY)
        zero = None
    z = 8.0 if zero is None else zero[..., None]
    codes = torch.round(g / scale[..., None] + z).clamp_(0, 15).to(torch.uint8).view(n, k)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)                            # [N, K/2]
    return QuantizedWeight("int4", packed.contiguous(), scale, zero, group_size)


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight [N, K] the format stands for, computed in float32 and cast to dtype."""
    if qw.format in ("int8", "fp8"):
        return (qw.qweight.float() * qw.scale[:, None]).to(dtype)
    n, k = qw.shape
    codes = torch.stack([qw.qweight & 15, qw.qweight >> 4], 2).view(n, k).float()   # [N, K]
    zero = torch.full_like(qw.scale, 8.0) if qw.zero is None else qw.zero
    g = qw.group_size
    w = (codes.view(n, k // g, g) - zero[..., None]) * qw.scale[..., None]
    return w.view(n, k).to(dtype)


def quantize_activation_fp8(x: torch.Tensor):
    """Per-token dynamic fp8: x [M, K] -> (xq float8_e4m3fn [M, K], a_scale float32 [M])."""
    x = x.float()
    a_scale = (x.abs().amax(-1) / FP8_MAX).clamp_min(_TINY)
    return (x / a_scale[:, None]).to(torch.float8_e4m3fn), a_scale


def reference_linear(x: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """x [..., K] @ w.T -> [..., N] in x's dtype, computed in float32 (the kernels' oracle)."""
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k).float()
    if qw.format == "fp8":
        xq, a_scale = quantize_activation_fp8(x2)
        y = (xq.float() @ qw.qweight.float().t()) * a_scale[:, None] * qw.scale[None, :]
    else:
        y = x2 @ dequantize(qw).t()
    return y.to(x.dtype).view(*lead, qw.shape[0])


def cat_rows(weights: Sequence[QuantizedWeight]) -> QuantizedWeight:
    """Stack weights of one format along the output dim (packing q/k/v, gate/up)."""
    first = weights[0]
    if any(w.format != first.format or w.group_size != first.group_size or (w.zero is None) != (first.zero is None)
           for w in weights):
        raise ValueError("cat_rows: weights differ in format, group size or zero points")
    zero = None if first.zero is None else torch.cat([w.zero for w in weights])
    return QuantizedWeight(first.format, torch.cat([w.qweight for w in weights]),
                           torch.cat([w.scale for w in weights]), zero, first.group_size)
