"""Quantization at load: a stream of dense named tensors in, the quantized model's tensors out.

Quantization happens tensor by tensor, right after each tensor is read and moved to the device
(the device does the arithmetic): the host holds one dense tensor at a time, never the model.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional, Tuple, Union

import torch

from ..config import ModelConfig
from ..quant.formats import QuantizedWeight, quantize_weight
from ..quant.spec import EMBEDDING, HEAD, QuantSpec, quantized_shapes

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
