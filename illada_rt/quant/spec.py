"""What a quantized model is: the format and options (QuantSpec), which tensors it quantizes,
and the checks that refuse what cannot work (unknown format, int4 groups that do not divide a
matrix, fp8 on a GPU without fp8 tensor cores), before any weight is read.

Quantized: every block matrix (q/k/v_proj, attn_out, ff_proj, up_proj, ff_out) and, with
quantize_head, the LM head; with tied embeddings the head is a quantized copy of wte while the
embedding itself stays dense. Embeddings and norms always stay in the base dtype.

The "quantization" section of a quantized checkpoint's config.json is QuantSpec.to_section()
(loading/checkpoint.py reads it back). Nothing here reads files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ..config import PREFIX, ModelConfig, expected_shapes
from .formats import FORMATS, stored_parts

BLOCK_MATRICES = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
HEAD = PREFIX + "ff_out.weight"       # the LM head's name, also for a quantized copy of tied embeddings
EMBEDDING = PREFIX + "wte.weight"
SECTION_VERSION = 1


@dataclass(frozen=True)
class QuantSpec:
    format: str
    group_size: int = 128          # int4 only: inputs per scale
    zero_point: bool = True        # int4 only: asymmetric groups with zero points
    quantize_head: bool = False

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"unknown quantization format {self.format!r}; choose one of {list(FORMATS)}")
        if self.format == "int4" and (not isinstance(self.group_size, int) or self.group_size <= 0
                                      or self.group_size % 2):
            raise ValueError(f"int4 group_size must be a positive even integer, got {self.group_size!r}")

    @property
    def groups(self) -> int:
        """QuantizedWeight.group_size: the group for int4, 0 for the per-channel formats."""
        return self.group_size if self.format == "int4" else 0

    @property
    def zeros(self) -> bool:
        """Whether weights carry zero points (int4 with zero_point)."""
        return self.format == "int4" and self.zero_point

    def to_section(self) -> dict:
        return {"format": self.format, "group_size": self.groups or None, "zero_point": self.zeros,
                "quantize_head": self.quantize_head, "version": SECTION_VERSION,
                "modules": list(BLOCK_MATRICES) + (["lm_head"] if self.quantize_head else [])}


def quantized_shapes(cfg: ModelConfig, spec: QuantSpec) -> Dict[str, Tuple[int, int]]:
    """Public name -> [N, K] of every matrix `spec` quantizes (HEAD included with quantize_head)."""
    shapes = expected_shapes(cfg)
    out = {name: shape for name, shape in shapes.items()
           if name.startswith(PREFIX + "blocks.") and name.split(".")[-2] in BLOCK_MATRICES}
    if spec.quantize_head:
        out[HEAD] = (cfg.embedding_size, cfg.d_model)
    return out


def check_spec(cfg: ModelConfig, spec: QuantSpec, device: torch.device) -> None:
    """Raise before loading where `spec` cannot run: int4 groups that do not divide an input dim
    (ValueError naming the tensor), fp8 on a CUDA device older than sm_89 (RuntimeError)."""
    if spec.format == "int4":
        shapes = quantized_shapes(cfg, spec)
        for name, (n, k) in shapes.items():
            if k % spec.group_size:
                fits = [g for g in (128, 64, 32, 16, 8) if all(c % g == 0 for _, c in shapes.values())]
                hint = f" (e.g. {fits[0]})" if fits else ""
                raise ValueError(f"int4 with group_size {spec.group_size}: tensor {name} [{n}, {k}] has input "
                                 f"dim {k}, not divisible by {spec.group_size}; pass a group_size dividing "
                                 f"every input dim{hint}")
    if spec.format == "fp8" and device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise RuntimeError(f"fp8 needs fp8 tensor cores (compute capability 8.9 or newer); "
                               f"{torch.cuda.get_device_name(device)} has {major}.{minor}: use int8 or int4 there")


def estimate_weight_bytes(cfg: ModelConfig, spec: Optional[QuantSpec], dense_bytes: int) -> int:
    """Bytes of the loaded weights with `dense_bytes` per dense element (None: nothing quantized)."""
    shapes = expected_shapes(cfg)
    quantized = {} if spec is None else quantized_shapes(cfg, spec)
    total = sum(dense_bytes * (s[0] * (s[1] if len(s) > 1 else 1)) for n, s in shapes.items() if n not in quantized)
    for n, k in quantized.values():
        for shape, dtype in stored_parts(spec.format, n, k, spec.group_size, spec.zeros).values():
            count = shape[0] * (shape[1] if len(shape) > 1 else 1)
            total += count * torch.empty((), dtype=dtype).element_size()
    return total
