"""The one safetensors reader: a checkpoint directory's weight files (single-file or sharded with
an index) and each tensor read on its own, checked against what the caller expects.

Files are memory-mapped (one open at a time) and each tensor is converted on its own, so loading
never holds a second full copy of the model in host memory. Every failure is a CheckpointError
naming the file and the tensor. Pickle formats are never read.
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, Iterable, Optional, Tuple

import torch
from safetensors import safe_open

from ..config import PREFIX
from .errors import CheckpointError

SINGLE_FILE = "model.safetensors"
MAX_HEADER_BYTES = 100 * 2 ** 20       # safetensors' own bound on a header
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
        return _read_index(index_path, model_dir)
    if os.path.isfile(single_path):
        return {name: single_path for name in open_safetensors(single_path).keys()}
    pickles = [n for n in os.listdir(model_dir) if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    hint = f" (found {pickles}: pickle formats are not loaded; convert them to safetensors)" if pickles else ""
    raise CheckpointError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")


def _read_index(index_path: str, model_dir: str) -> Dict[str, str]:
    """Tensor name -> shard path from a model.safetensors.index.json: its "weight_map" must map
    names to file names inside model_dir, every one present."""
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (ValueError, RecursionError) as e:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{index_path}: not a valid safetensors index ({type(e).__name__}: {e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: not a valid safetensors index (\"weight_map\" must be an object "
                              f"mapping tensor names to file names, got {type(weight_map).__name__})")
    root = os.path.realpath(model_dir)
    files = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise CheckpointError(f"{index_path}: weight_map[{name!r}] must be a file name, got {shard!r:.60}")
        path = os.path.join(model_dir, shard)
        if os.path.isabs(shard) or not os.path.realpath(path).startswith(root + os.sep):
            raise CheckpointError(f"{index_path}: weight_map[{name!r}] = {shard!r:.60} is not a file inside "
                                  f"{model_dir}")
        files[name] = path
    for path in sorted(set(files.values())):
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: shard named in {INDEX_FILE} is missing")
    return files


def read_header(path: str) -> Dict[str, Tuple[int, ...]]:
    """Tensor name -> shape, from the header of the safetensors file `path` alone (8 bytes of
    length, then that many bytes of JSON): what the file holds, known before any tensor is read."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= MAX_HEADER_BYTES:
                raise ValueError(f"header length {size}")
            header = json.loads(f.read(size))
        return {name: tuple(int(n) for n in entry["shape"]) for name, entry in header.items()
                if name != "__metadata__"}
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors header ({type(e).__name__}: {e})") from None


_BLOCK = re.compile(re.escape(PREFIX) + r"blocks\.(\d+)\.")   # a layer's tensor: its index


def check_layer_count(names: Iterable[str], n_layers: int, where: str) -> None:
    """CheckpointError unless the tensor `names` hold exactly layers 0 .. n_layers - 1: a layer more
    than config.json says would be dropped silently, and a count the files do not back would size
    everything built from it (expected_shapes alone is O(n_layers)). Names only, no tensor read."""
    stored = {int(m.group(1)) for m in map(_BLOCK.match, names) if m}
    if stored == set(range(n_layers)):
        return
    if stored == set(range(len(stored))):
        held = f"blocks 0..{len(stored) - 1}" if stored else "no blocks"
    else:
        held = f"blocks {sorted(stored)[:8]}{'...' if len(stored) > 8 else ''}, not consecutive from 0"
    raise CheckpointError(f"{where}: {len(stored)} layers stored ({held}), config.json says n_layers {n_layers}")


def check_stored_layers(model_dir: str, n_layers: int) -> None:
    """check_layer_count on a checkpoint directory, from its index or its single file's header: a
    config can be refused before anything is sized by it (load_model, quantize)."""
    index_path = os.path.join(model_dir, INDEX_FILE)
    if os.path.isfile(index_path):
        check_layer_count(_read_index(index_path, model_dir), n_layers, index_path)
        return
    single_path = os.path.join(model_dir, SINGLE_FILE)
    if os.path.isfile(single_path):
        check_layer_count(read_header(single_path), n_layers, single_path)
        return
    weight_files(model_dir)   # no weights: its error


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

    def check_layers(self, n_layers: int) -> None:
        """CheckpointError unless the files hold exactly layers 0 .. n_layers - 1 (check_layer_count)."""
        check_layer_count(self.files, n_layers, ", ".join(sorted(set(self.files.values()))) or self.model_dir)

    def check_shapes(self, shapes: Dict[str, Tuple[int, ...]]) -> None:
        """CheckpointError naming the first of `shapes` (name -> shape) missing from the files or
        stored with another shape, from the files' headers alone: before any tensor is read."""
        self.require(shapes)
        headers: Dict[str, Dict[str, Tuple[int, ...]]] = {}
        for name, shape in shapes.items():
            path = self.files[name]
            if path not in headers:
                headers[path] = read_header(path)
            whole = headers[path].get(name)
            if whole is None:
                raise CheckpointError(f"{path}: tensor {name} is named in {INDEX_FILE} but the file does not hold it")
            if whole != tuple(shape):
                raise self._shape_error(path, name, whole, shape)

    def _shape_error(self, path: str, name: str, whole, shape) -> CheckpointError:
        implied = "config.json implies" if self.what is None else f"{self.what} and config.json imply"
        return CheckpointError(f"{path}: tensor {name} has shape {tuple(whole)}, {implied} {tuple(shape)}")

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
            raise self._shape_error(path, name, whole, shape)
        if dtype is None and not t.is_floating_point():
            raise CheckpointError(f"{path}: tensor {name} has dtype {t.dtype}, expected floating point")
        if dtype is not None and t.dtype != dtype:
            raise CheckpointError(f"{path}: tensor {name} has dtype {t.dtype}, "
                                  f"{self.what or 'the checkpoint'} stores {dtype}")
        return t
