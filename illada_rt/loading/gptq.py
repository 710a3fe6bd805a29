"""GPTQ 4-bit checkpoints (the common Hugging Face layout) read as int4 weights.

A GPTQ linear [N outputs, K inputs] with group size G is stored as
  qweight int32 [K / 8, N]    eight 4-bit codes per word along K: code[k, n] = word[k // 8, n] >> 4 (k % 8)
  qzeros  int32 [K / G, N / 8] eight 4-bit zero points per word along N
  scales  float16 [K / G, N]
  g_idx   int32 [K]            the group of every input (k // G unless act-order reordered them)
and w[n, k] = (code[k, n] - zero[g, n]) * scales[g, n] with g = g_idx[k]. The original format
("checkpoint_format": "gptq", the default) stores zero - 1; "gptq_v2" stores the zero itself.

That is quant/formats.py's int4 with zero points once transposed and unpacked, as long as the groups
are contiguous runs of G inputs: act-order checkpoints (desc_act, a permuted g_idx) are refused.
Only the block matrices are read quantized; embeddings, norms and the head are dense.
"""
from __future__ import annotations

from typing import Iterator, Tuple, Union

import torch

from ..config import ModelConfig, expected_shapes
from ..quant.formats import QuantizedWeight
from ..quant.spec import QuantSpec, quantized_shapes
from .errors import CheckpointError
from .safetensors import TensorReader


def gptq_spec(raw: dict, path: str, cfg: ModelConfig) -> Tuple[QuantSpec, int]:
    """(int4 QuantSpec, zero offset) from config.json's quantization_config; CheckpointError where
    illada_rt cannot represent it."""
    qc = raw.get("quantization_config") or {}
    bits, group = qc.get("bits"), qc.get("group_size")
    if bits != 4:
        raise CheckpointError(f"{path}: GPTQ with bits={bits!r}; illada_rt reads 4-bit GPTQ only")
    if qc.get("desc_act"):
        raise CheckpointError(f"{path}: GPTQ with desc_act (act-order) permutes the groups; illada_rt needs "
                              "contiguous groups (re-quantize without desc_act, or quantize the bf16 model)")
    fmt = qc.get("checkpoint_format", "gptq")
    if fmt not in ("gptq", "gptq_v2"):
        raise CheckpointError(f"{path}: GPTQ checkpoint_format {fmt!r} is not supported (gptq, gptq_v2)")
    if group == -1:
        group = cfg.d_model   # one group per row: valid only where every input dim is d_model
    if not isinstance(group, int) or group <= 0 or group % 8:
        raise CheckpointError(f"{path}: GPTQ group_size {group!r} must be a positive multiple of 8")
    return QuantSpec("int4", group, True, False), (1 if fmt == "gptq" else 0)


def unpack_int32(words: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 words holding eight 4-bit values (lowest bits first) -> uint8 codes, 8x longer along dim."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    w = words.to(torch.int32).unsqueeze(dim + 1)                      # [..., 1, ...]
    shape = [1] * w.dim()
    shape[dim + 1] = 8
    codes = (w >> shifts.view(shape)) & 15
    out_shape = list(words.shape)
    out_shape[dim] *= 8
    return codes.reshape(out_shape).to(torch.uint8)


def from_gptq(qweight, qzeros, scales, g_idx, group_size: int, zero_offset: int, name: str,
              path: str) -> QuantizedWeight:
    """One GPTQ linear -> QuantizedWeight int4 [N, K] (see the module docstring)."""
    codes = unpack_int32(qweight, 0).t()                                 # [N, K]
    n, k = codes.shape
    if k % group_size or scales.shape != (k // group_size, n) or qzeros.shape != (k // group_size, n // 8):
        raise CheckpointError(f"{path}: {name}: qweight {tuple(qweight.shape)}, qzeros {tuple(qzeros.shape)} "
                              f"and scales {tuple(scales.shape)} disagree with group_size {group_size}")
    if g_idx is not None and not torch.equal(g_idx.to(torch.int64), torch.arange(k) // group_size):
        raise CheckpointError(f"{path}: {name}.g_idx reorders the inputs (act-order); illada_rt needs "
                              "contiguous groups")
    zero = (unpack_int32(qzeros, 1).float() + zero_offset).t().contiguous()    # [N, K / G]
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)                           # [N, K / 2]
    return QuantizedWeight("int4", packed.contiguous(), scales.float().t().contiguous(), zero, group_size)


def iter_gptq(model_dir: str, cfg: ModelConfig, spec: QuantSpec, zero_offset: int, dtype: torch.dtype,
              device: torch.device, progress=None) -> Iterator[Tuple[str, Union[torch.Tensor, QuantizedWeight]]]:
    """(public name, dense tensor in `dtype` or int4 QuantizedWeight) on `device` for a GPTQ checkpoint."""
    reader = TensorReader(model_dir, "the GPTQ checkpoint")
    reader.check_layers(cfg.n_layers)
    files, read = reader.files, reader.read
    quantized = quantized_shapes(cfg, spec)
    dense = {n: s for n, s in expected_shapes(cfg).items() if n not in quantized}
    reader.check_shapes(dense)     # the packed parts' shapes are checked as each is unpacked (from_gptq)
    total = len(dense) + len(quantized)
    for done, (name, shape) in enumerate(dense.items(), 1):
        yield name, read(name, shape).to(device=device, dtype=dtype)
        if progress is not None:
            progress(done, total)
    for done, (name, (n, k)) in enumerate(quantized.items(), len(dense) + 1):
        base = name[: -len(".weight")]
        qweight, qzeros = read(base + ".qweight", dtype=torch.int32), read(base + ".qzeros", dtype=torch.int32)
        scales = read(base + ".scales")
        g_idx = read(base + ".g_idx", dtype=torch.int32) if base + ".g_idx" in files else None
        qw = from_gptq(qweight, qzeros, scales, g_idx, spec.group_size, zero_offset, base, files[base + ".qweight"])
        if qw.shape != (n, k):
            raise CheckpointError(f"{files[base + '.qweight']}: {base} unpacks to {list(qw.shape)}, config.json "
                                  f"implies {[n, k]}")
        yield name, qw.to(device)
        if progress is not None:
            progress(done, total)
