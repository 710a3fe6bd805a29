"""The one safetensors reader: a checkpoint directory's weight files (single-file or sharded with
an index) and each tensor read on its own, checked against what the caller expects.

Files are memory-mapped (one open at a time) and each tensor is converted on its own, so loading
never holds a second full copy of the model in host memory. Every failure is a CheckpointError
naming the file and the tensor. Pickle formats are never read.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, Optional, Tuple

import torch
from safetensors import safe_open

from .errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def open_safetensors(path: str):
    """A safe_open handle on `path` (CPU tensors); CheckpointError for a truncated or corrupt file."""
    try:
        return safe_open(path, framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from None


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
        return {name: single_path for name in open_safetensors(single_path).keys()}
    pickles = [n for n in os.listdir(model_dir) if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    hint = f" (found {pickles}: pickle formats are not loaded; convert them to safetensors)" if pickles else ""
    raise CheckpointError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")


class TensorReader:
    """The tensors of one checkpoint directory, read by name and checked.

    what: how messages name the checkpoint; None for a plain (dense) one ("missing from the
    checkpoint", "config.json implies"), else e.g. "the int4 quantized checkpoint" ("missing from
    the int4 quantized checkpoint", "the int4 quantized checkpoint and config.json imply").
    """

    def __init__(self, model_dir: str, what: Optional[str] = None):
        self.model_dir, self.what = model_dir, what
        self.files = weight_files(model_dir)       # tensor name -> file
        self._path, self._handle = None, None      # the one file open now

    def require(self, names: Iterable[str]) -> None:
        """CheckpointError naming the first of `names` the files do not hold (and how many more)."""
        missing = [n for n in names if n not in self.files]
        if missing:
            where = sorted(set(self.files.values())) or [self.model_dir]
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise CheckpointError(f"{', '.join(where)}: tensor {missing[0]}{more} missing from "
                                  f"{self.what or 'the checkpoint'}")

    def read(self, name: str, shape: Optional[Tuple[int, ...]] = None,
             dtype: Optional[torch.dtype] = None, index: Optional[Tuple[slice, ...]] = None) -> torch.Tensor:
        """The tensor `name` as stored; shape None: any; dtype None: any floating point dtype.
        index: read only that slice of it (safetensors get_slice: nothing else leaves the file);
        shape is then the whole tensor's."""
        self.require([name])
        path = self.files[name]
        if path != self._path:
            self._path, self._handle = None, None                 # let the previous file go first
            self._handle, self._path = open_safetensors(path), path
        try:
            if index is None:
                t = self._handle.get_tensor(name)
                whole = tuple(t.shape)
            else:
                part = self._handle.get_slice(name)
                whole = tuple(part.get_shape())
                t = part[index] if shape is None or whole == tuple(shape) else None
        except Exception as e:
            raise CheckpointError(f"{path}: tensor {name} cannot be read ({e})") from None
        if shape is not None and whole != tuple(shape):
            implied = "config.json implies" if self.what is None else f"{self.what} and config.json imply"
            raise CheckpointError(f"{path}: tensor {name} has shape {whole}, {implied} {tuple(shape)}")
        if dtype is None and not t.is_floating_point():
            raise CheckpointError(f"{path}: tensor {name} has dtype {t.dtype}, expected floating point")
        if dtype is not None and t.dtype != dtype:
            raise CheckpointError(f"{path}: tensor {name} has dtype {t.dtype}, "
                                  f"{self.what or 'the checkpoint'} stores {dtype}")
        return t
