"""load_model: a checkpoint directory -> LLaDAModel on a device.

The checkpoint (config.json, read once) decides the stream of named tensors, and
LLaDAModel.from_weights packs them as they arrive:

    4-bit GPTQ (quantization_config)    gptq.iter_gptq                     int4, as stored
    illada_rt's "quantization" section  quantized.iter_quantized           as stored
    quantization= given                 dense.iter_weights -> quantize_at_load.quantize_stream
    otherwise                           dense.iter_weights                 in `dtype`
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Tuple, Union

import torch

from ..model import LLaDAModel
from ..model.shard import ModelShard
from ..ops import Kernels
from ..quant.formats import QuantizedWeight
from ..quant.spec import QuantSpec, check_spec
from .checkpoint import Checkpoint
from .dense import iter_weights
from .errors import CheckpointError
from .gptq import gptq_spec, iter_gptq
from .quantize_at_load import quantize_stream
from .quantized import iter_quantized
from .safetensors import check_stored_layers

Named = Iterable[Tuple[str, Union[torch.Tensor, QuantizedWeight]]]


def named_tensors(ckpt: Checkpoint, dtype: torch.dtype, device: torch.device, progress=None,
                  quantization: Optional[str] = None, quantize_head: bool = False,
                  group_size: int = 128, shard: Optional[ModelShard] = None) -> Named:
    """The model's (public name, tensor or QuantizedWeight) pairs on `device`, from the stream the
    checkpoint and `quantization` call for (see the module docstring). Everything that can be
    refused without reading a weight is refused here, before the stream starts.
    shard: a tensor-parallel rank's slices (model/shard.py): plain and stored-quantized checkpoints
    are read as slices; quantizing at load and GPTQ need whole rows and groups, so each tensor is
    converted whole and then sliced (one tensor at a time, the codes a single process holds)."""
    model_dir, cfg = ckpt.model_dir, ckpt.cfg
    check_stored_layers(model_dir, cfg.n_layers)   # first: everything below is sized by cfg
    if ckpt.foreign_method == "gptq":
        spec, zero_offset = gptq_spec(ckpt.raw, ckpt.config_path, cfg)
        if quantization not in (None, "int4"):
            raise CheckpointError(f"{model_dir}: a 4-bit GPTQ checkpoint loads as int4, but "
                                  f"quantization={quantization!r} was asked for")
        check_spec(cfg, spec, device)
        return _sliced(iter_gptq(model_dir, cfg, spec, zero_offset, dtype, device, progress), shard)
    stored = ckpt.quantization
    if stored is not None:
        if quantization is not None and quantization != stored.format:
            raise CheckpointError(f"{model_dir}: the checkpoint is quantized to {stored.format} (config.json "
                                  f"\"quantization\"), but quantization={quantization!r} was asked for")
        check_spec(cfg, stored, device)
        return iter_quantized(model_dir, cfg, stored, dtype, device, progress, shard)
    if quantization is None:
        # the host holds one converted tensor at a time, never a second model
        return ((name, t.to(device)) for name, t in iter_weights(model_dir, cfg, dtype, progress, shard))
    spec = QuantSpec(quantization, group_size, True, bool(quantize_head))
    check_spec(cfg, spec, device)
    return _sliced(quantize_stream(iter_weights(model_dir, cfg, None, progress), cfg, spec, dtype, device), shard)


def _sliced(named: Named, shard: Optional[ModelShard]) -> Named:
    """Each (name, whole tensor) as the rank's slice of it (all of it without a shard)."""
    return named if shard is None else ((name, shard.slice_weight(name, t)) for name, t in named)


def load_model(checkpoint: Union[Checkpoint, str, os.PathLike], dtype: torch.dtype, device: torch.device,
               progress=None, quantization: Optional[str] = None, quantize_head: bool = False,
               group_size: int = 128, kernels: Optional[Kernels] = None,
               shard: Optional[ModelShard] = None) -> LLaDAModel:
    """The model of `checkpoint` (a Checkpoint, or a directory: opened here) on `device`: as stored
    when the checkpoint is quantized (a `quantization` argument must then name its format),
    quantized at load when `quantization` is given, dense in `dtype` otherwise. group_size and
    quantize_head apply to quantization at load only. progress: optional callable (tensors loaded,
    tensors in all). kernels: the model's op implementations (None: LLaDAModel's default).
    shard: load a tensor-parallel rank's share (model/shard.py) instead of the whole model."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.open(checkpoint)
    named = named_tensors(ckpt, dtype, device, progress, quantization, quantize_head, group_size, shard)
    return LLaDAModel.from_weights(ckpt.cfg, named, kernels, shard)
