"""The stream of a plain (bf16/fp32) checkpoint: every tensor the model needs, checked against the config."""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from ..config import ModelConfig, expected_shapes
from ..model.shard import ModelShard
from ..quant.spec import HEAD
from .errors import CheckpointError
from .safetensors import TensorReader

Progress = Callable[[int, int], None]  # (tensors done, tensors in all)


def iter_weights(model_dir: str, cfg: ModelConfig, dtype: Optional[torch.dtype],
                 progress: Optional[Progress] = None,
                 shard: Optional[ModelShard] = None) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield (name, tensor in `dtype`; as stored when None) for every tensor the model needs, file by
    file, checked against cfg: every tensor present, no biases, the shapes config.json implies.
    shard: a tensor-parallel rank's slices only (model/shard.py), read as slices from the files."""
    reader = TensorReader(model_dir)
    reader.check_layers(cfg.n_layers)       # before expected_shapes: n_layers then has the files' backing
    shapes = expected_shapes(cfg)
    reader.require(shapes)
    biases = [n for n in reader.files if n.endswith(".bias")]
    if biases:
        raise CheckpointError(f"{reader.files[biases[0]]}: tensor {biases[0]} is a bias; LLaDA blocks have none")
    extra = [n for n in reader.files if n not in shapes]
    if extra:
        why = " (config.json says weight_tying: the head is the embedding)" if extra[0] == HEAD and cfg.weight_tying \
            else ""
        raise CheckpointError(f"{reader.files[extra[0]]}: tensor {extra[0]} is not part of the model config.json "
                              f"describes{why}")
    reader.check_shapes(shapes)             # every shape from the headers, before the first tensor is read
    by_file: Dict[str, List[str]] = {}
    for name in shapes:
        by_file.setdefault(reader.files[name], []).append(name)
    done = 0
    for names in by_file.values():
        for name in names:
            t = reader.read(name, shapes[name], index=None if shard is None else shard.index(name))
            done += 1
            if progress is not None:
                progress(done, len(shapes))
            yield name, t if dtype is None else t.to(dtype)


def load_state_dict(model_dir: str, cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """All weights as one dict (the reference model's input)."""
    return dict(iter_weights(model_dir, cfg, dtype))
