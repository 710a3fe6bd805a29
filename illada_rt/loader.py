"""Read LLaDA checkpoints: safetensors, single-file or sharded, tensor by tensor.

Files are memory-mapped and each tensor is converted on its own, so loading never
holds a second full copy of the model in host memory. Every failure names the
file and the tensor. Pickle formats are never read.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from safetensors import safe_open

from .config import ModelConfig

PREFIX = "model.transformer."
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A weight file is missing, unreadable, corrupt, or disagrees with config.json."""


def expected_shapes(cfg: ModelConfig) -> Dict[str, Tuple[int, ...]]:
    """Public parameter name -> shape, for every tensor the model needs."""
    d, f, kv = cfg.d_model, cfg.mlp_hidden_size, cfg.n_kv_heads * cfg.head_dim
    shapes = {PREFIX + "wte.weight": (cfg.embedding_size, d), PREFIX + "ln_f.weight": (d,)}
    if not cfg.weight_tying:
        shapes[PREFIX + "ff_out.weight"] = (cfg.embedding_size, d)
    for i in range(cfg.n_layers):
        p = f"{PREFIX}blocks.{i}."
        shapes.update({
            p + "attn_norm.weight": (d,), p + "ff_norm.weight": (d,),
            p + "q_proj.weight": (d, d), p + "k_proj.weight": (kv, d), p + "v_proj.weight": (kv, d),
            p + "attn_out.weight": (d, d),
            p + "ff_proj.weight": (f, d), p + "up_proj.weight": (f, d), p + "ff_out.weight": (d, f),
        })
    return shapes


def weight_files(model_dir: str) -> Dict[str, str]:
    """Tensor name -> absolute path of the safetensors file holding it."""
    if not os.path.isdir(model_dir):
        raise CheckpointError(f"{model_dir}: model directory does not exist")
    index_path = os.path.join(model_dir, INDEX_FILE)
    single_path = os.path.join(model_dir, SINGLE_FILE)
    if os.path.isfile(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_path}: not a valid safetensors index ({e!r})") from None
        files = {name: os.path.join(model_dir, shard) for name, shard in weight_map.items()}
        for path in sorted(set(files.values())):
            if not os.path.isfile(path):
                raise CheckpointError(f"{path}: shard named in {INDEX_FILE} is missing")
        return files
    if os.path.isfile(single_path):
        return {name: single_path for name in _open(single_path).keys()}
    pickles = [n for n in os.listdir(model_dir) if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    hint = f" (found {pickles}: pickle formats are not loaded; convert them to safetensors)" if pickles else ""
    raise CheckpointError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")


def _open(path: str):
    try:
        return safe_open(path, framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from None


Progress = Callable[[int, int], None]  # (tensors done, tensors in all)


def iter_weights(model_dir: str, cfg: ModelConfig, dtype: Optional[torch.dtype],
                 progress: Optional[Progress] = None) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield (name, tensor in `dtype`; as stored when None) for every tensor the model needs, checked against cfg."""
    files = weight_files(model_dir)
    shapes = expected_shapes(cfg)
    missing = [n for n in shapes if n not in files]
    if missing:
        where = sorted(set(files.values())) or [model_dir]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{', '.join(where)}: tensor {missing[0]}{more} missing from the checkpoint")
    biases = [n for n in files if n.endswith(".bias")]
    if biases:
        raise CheckpointError(f"{files[biases[0]]}: tensor {biases[0]} is a bias; LLaDA blocks have none")
    by_file: Dict[str, List[str]] = {}
    for name in shapes:
        by_file.setdefault(files[name], []).append(name)
    done = 0
    for path, names in by_file.items():
        handle = _open(path)
        for name in names:
            try:
                t = handle.get_tensor(name)
            except Exception as e:
                raise CheckpointError(f"{path}: tensor {name} cannot be read ({e})") from None
            if tuple(t.shape) != shapes[name]:
                raise CheckpointError(f"{path}: tensor {name} has shape {tuple(t.shape)}, "
                                      f"config.json implies {shapes[name]}")
            if not t.is_floating_point():
                raise CheckpointError(f"{path}: tensor {name} has dtype {t.dtype}, expected floating point")
            done += 1
            if progress is not None:
                progress(done, len(shapes))
            yield name, t if dtype is None else t.to(dtype)


def load_state_dict(model_dir: str, cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """All weights as one dict (the reference model's input)."""
    return dict(iter_weights(model_dir, cfg, dtype))
