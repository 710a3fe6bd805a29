"""The stream of a quantized checkpoint written by illada_rt.quantize (writer.py), read as stored.

On disk: config.json with a "quantization" section (QuantSpec.to_section), safetensors holding
every dense tensor under its usual name (in the source dtype) and every quantized matrix
"<base>.weight" as its parts "<base>.qweight", "<base>.scale" and, for int4 with zero points,
"<base>.zero" (quant.formats.stored_parts gives their shapes and dtypes). A quantized head of a
model with tied embeddings is stored as "model.transformer.ff_out.*". Large checkpoints are
sharded with a model.safetensors.index.json, as every checkpoint may be.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple, Union

import torch

from ..config import ModelConfig, expected_shapes
from ..model.shard import ModelShard
from ..quant.formats import QuantizedWeight, stored_parts
from ..quant.spec import QuantSpec, quantized_shapes
from .errors import CheckpointError
from .safetensors import TensorReader

PART_NAMES = ("qweight", "scale", "zero")


def part_name(name: str, part: str) -> str:
    """The stored name of one part of the quantized matrix `name`: "<base>.weight" -> "<base>.<part>"."""
    return f"{name[: -len('.weight')]}.{part}"


def iter_quantized(model_dir: str, cfg: ModelConfig, spec: QuantSpec, dtype: torch.dtype, device: torch.device,
                   progress=None, shard: Optional[ModelShard] = None
                   ) -> Iterator[Tuple[str, Union[torch.Tensor, QuantizedWeight]]]:
    """(public name, dense tensor in `dtype` or QuantizedWeight) on `device` for every tensor the
    model needs; CheckpointError naming the file and tensor where the files disagree with `spec`.
    shard: a tensor-parallel rank's slices only, read as slices from the files."""
    reader = TensorReader(model_dir, f"the {spec.format} quantized checkpoint")
    reader.check_layers(cfg.n_layers)
    files = reader.files
    quantized = quantized_shapes(cfg, spec)
    dense = {n: s for n, s in expected_shapes(cfg).items() if n not in quantized}
    wanted = set(dense) | {part_name(n, p) for n, (rows, cols) in quantized.items()
                           for p in stored_parts(spec.format, rows, cols, spec.group_size, spec.zeros)}
    for name in sorted(files):
        if name.endswith(tuple("." + p for p in PART_NAMES)) and name not in wanted:
            raise CheckpointError(f"{files[name]}: tensor {name} is not part of the {spec.format} checkpoint "
                                  f"config.json describes ({spec.to_section()})")
    for name in quantized:
        if name in files:
            raise CheckpointError(f"{files[name]}: tensor {name} is dense, but config.json says it is "
                                  f"quantized to {spec.format}")
    reader.check_shapes({**dense, **{part_name(n, p): shape for n, (rows, cols) in quantized.items()
                                     for p, (shape, _) in stored_parts(spec.format, rows, cols, spec.group_size,
                                                                       spec.zeros).items()}})
    total, done = len(dense) + len(quantized), 0
    for name, shape in dense.items():
        index = None if shard is None else shard.index(name)
        yield name, reader.read(name, shape, index=index).to(device=device, dtype=dtype)
        done += 1
        if progress is not None:
            progress(done, total)
    for name, (rows, cols) in quantized.items():
        parts = {p: reader.read(part_name(name, p), shape, dt, None if shard is None else
                                shard.part_index(name, p, spec.format, spec.group_size)).to(device)
                 for p, (shape, dt) in stored_parts(spec.format, rows, cols, spec.group_size, spec.zeros).items()}
        yield name, QuantizedWeight(spec.format, parts["qweight"], parts["scale"], parts.get("zero"), spec.groups)
        done += 1
        if progress is not None:
            progress(done, total)
