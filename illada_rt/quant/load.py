"""Build a quantized LLaDAModel: quantize a bf16/fp32 checkpoint while it streams in, or read a
quantized checkpoint (see checkpoint.py) as it is.

Quantization happens tensor by tensor, right after each tensor is read and moved to the device
(the device does the arithmetic): the host holds one dense tensor at a time, never the model.
"""
from __future__ import annotations

from typing import Dict, Iterable, Iterator, Optional, Tuple, Union

import torch

from ..config import ModelConfig
from ..loader import CheckpointError, iter_weights
from ..model import LLaDAModel
from ..ops import Kernels
from .formats import QuantizedWeight, quantize_weight
from .spec import (EMBEDDING, HEAD, QuantSpec, check_spec, foreign_method, quantized_shapes, read_config,
                   read_section)

Named = Iterable[Tuple[str, torch.Tensor]]


def quantize_stream(named: Named, cfg: ModelConfig, spec: QuantSpec, dtype: Optional[torch.dtype],
                    device: torch.device) -> Iterator[Tuple[str, Union[torch.Tensor, QuantizedWeight]]]:
    """(name, tensor as stored) -> (name, QuantizedWeight) for the matrices `spec` quantizes and
    (name, tensor in `dtype` on `device`; as stored when dtype is None) for the rest. With tied
    embeddings and quantize_head, a quantized copy of the embedding follows it as HEAD."""
    targets = quantized_shapes(cfg, spec)

    def quantize(t: torch.Tensor) -> QuantizedWeight:
        return quantize_weight(t.to(device), spec.format, spec.group_size, spec.zero_point)

    for name, t in named:
        if name in targets:
            yield name, quantize(t)
            continue
        yield name, t.to(device) if dtype is None else t.to(device=device, dtype=dtype)
        if name == EMBEDDING and HEAD in targets and cfg.weight_tying:
            yield HEAD, quantize(t)


def load_model(model_dir: str, cfg: ModelConfig, dtype: torch.dtype, device: torch.device, progress=None,
               quantization: Optional[str] = None, quantize_head: bool = False,
               group_size: int = 128, kernels: Optional[Kernels] = None) -> LLaDAModel:
    """The model of `model_dir` on `device`: as stored when the checkpoint is quantized (a
    `quantization` argument must then name its format), quantized at load when `quantization` is
    given, dense otherwise. group_size and quantize_head apply to quantization at load only.
    kernels: the model's op implementations (None: LLaDAModel's default)."""
    from .checkpoint import iter_quantized  # checkpoint.py builds on this module
    from .gptq import gptq_spec, iter_gptq

    stored = read_section(model_dir)
    if foreign_method(model_dir) == "gptq":
        raw, path = read_config(model_dir)
        spec, zero_offset = gptq_spec(raw, path, cfg)
        if quantization not in (None, "int4"):
            raise CheckpointError(f"{model_dir}: a 4-bit GPTQ checkpoint loads as int4, but "
                                  f"quantization={quantization!r} was asked for")
        check_spec(cfg, spec, device)
        return LLaDAModel.from_weights(cfg, iter_gptq(model_dir, cfg, spec, zero_offset, dtype, device, progress),
                                       kernels)
    if stored is not None:
        if quantization is not None and quantization != stored.format:
            raise CheckpointError(f"{model_dir}: the checkpoint is quantized to {stored.format} (config.json "
                                  f"\"quantization\"), but quantization={quantization!r} was asked for")
        check_spec(cfg, stored, device)
        return LLaDAModel.from_weights(cfg, iter_quantized(model_dir, cfg, stored, dtype, device, progress), kernels)
    if quantization is None:
        return LLaDAModel.load(model_dir, cfg, dtype, progress, device, kernels)
    spec = QuantSpec(quantization, group_size, True, bool(quantize_head))
    check_spec(cfg, spec, device)
    named = iter_weights(model_dir, cfg, None, progress)
    return LLaDAModel.from_weights(cfg, quantize_stream(named, cfg, spec, dtype, device), kernels)


def weight_bytes(model: LLaDAModel) -> Dict[str, int]:
    """Bytes of the model's weights: "quantized" (codes, scales, zeros), "dense" (the rest), "total".
    A tied dense head shares the embedding and is counted once."""
    mats = [model.head] + [m for w in model.layers for m in (w.wqkv, w.wo, w.w_gate_up, w.w_down)]
    dense = [model.wte, model.ln_f] + [t for w in model.layers for t in (w.attn_norm, w.ff_norm)]
    out = {"quantized": 0, "dense": 0}
    for m in mats:
        if isinstance(m, QuantizedWeight):
            out["quantized"] += m.nbytes
        elif m is not model.wte:
            dense.append(m)
    out["dense"] = sum(t.numel() * t.element_size() for t in dense)
    out["total"] = out["quantized"] + out["dense"]
    return out
