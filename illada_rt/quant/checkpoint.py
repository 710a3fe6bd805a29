"""Quantized checkpoints: write one from a bf16/fp32 checkpoint (quantize), read one back (iter_quantized).

On disk: config.json with a "quantization" section (QuantSpec.to_section), safetensors holding
every dense tensor under its usual name (in the source dtype) and every quantized matrix
"<base>.weight" as its parts "<base>.qweight", "<base>.scale" and, for int4 with zero points,
"<base>.zero" (formats.stored_parts gives their shapes and dtypes). A quantized head of a model
with tied embeddings is stored as "model.transformer.ff_out.*". Files above max_shard_bytes are
split into shards with a model.safetensors.index.json, as the loader reads them.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import ModelConfig
from ..loader import INDEX_FILE, SINGLE_FILE, CheckpointError, expected_shapes, iter_weights, weight_files
from .formats import QuantizedWeight, stored_parts
from .load import quantize_stream
from .spec import QuantSpec, check_spec, foreign_method, quantized_shapes, read_section

PART_NAMES = ("qweight", "scale", "zero")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _base(name: str) -> str:
    return name[: -len(".weight")]


class TensorReader:
    """Reads named tensors from a checkpoint's safetensors files, checking shape and dtype;
    every failure is a CheckpointError naming the file and the tensor."""

    def __init__(self, files: Dict[str, str], what: str):
        self.files, self.what, self.handles = files, what, {}

    def read(self, name: str, shape=None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The tensor `name`; shape None: any; dtype None: any floating point dtype."""
        if name not in self.files:
            where = ", ".join(sorted(set(self.files.values())))
            raise CheckpointError(f"{where}: tensor {name} missing from {self.what}")
        path = self.files[name]
        if path not in self.handles:
            try:
                self.handles[path] = safe_open(path, framework="pt", device="cpu")
            except Exception as e:
                raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from None
        try:
            t = self.handles[path].get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"{path}: tensor {name} cannot be read ({e})") from None
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{path}: tensor {name} has shape {tuple(t.shape)}, {self.what} and "
                                  f"config.json imply {tuple(shape)}")
        if dtype is None and not t.is_floating_point():
            raise CheckpointError(f"{path}: tensor {name} has dtype {t.dtype}, expected floating point")
        if dtype is not None and t.dtype != dtype:
            raise CheckpointError(f"{path}: tensor {name} has dtype {t.dtype}, {self.what} stores {dtype}")
        return t


def iter_quantized(model_dir: str, cfg: ModelConfig, spec: QuantSpec, dtype: torch.dtype, device: torch.device,
                   progress=None) -> Iterator[Tuple[str, Union[torch.Tensor, QuantizedWeight]]]:
    """(public name, dense tensor in `dtype` or QuantizedWeight) on `device` for every tensor the
    model needs; CheckpointError naming the file and tensor where the files disagree with `spec`."""
    files = weight_files(model_dir)
    quantized = quantized_shapes(cfg, spec)
    dense = {n: s for n, s in expected_shapes(cfg).items() if n not in quantized}
    wanted = set(dense) | {f"{_base(n)}.{p}" for n, (rows, cols) in quantized.items()
                           for p in stored_parts(spec.format, rows, cols, spec.group_size, spec.zeros)}
    for name in sorted(files):
        if name.endswith(tuple("." + p for p in PART_NAMES)) and name not in wanted:
            raise CheckpointError(f"{files[name]}: tensor {name} is not part of the {spec.format} checkpoint "
                                  f"config.json describes ({spec.to_section()})")
    for name in quantized:
        if name in files:
            raise CheckpointError(f"{files[name]}: tensor {name} is dense, but config.json says it is "
                                  f"quantized to {spec.format}")
    read = TensorReader(files, f"the {spec.format} quantized checkpoint").read
    total, done = len(dense) + len(quantized), 0
    for name, shape in expected_shapes(cfg).items():
        if name in quantized:
            continue
        yield name, read(name, shape).to(device=device, dtype=dtype)
        done += 1
        if progress is not None:
            progress(done, total)
    for name, (rows, cols) in quantized.items():
        parts = {p: read(f"{_base(name)}.{p}", shape, dt).to(device)
                 for p, (shape, dt) in stored_parts(spec.format, rows, cols, spec.group_size, spec.zeros).items()}
        yield name, QuantizedWeight(spec.format, parts["qweight"], parts["scale"], parts.get("zero"), spec.groups)
        done += 1
        if progress is not None:
            progress(done, total)


class _ShardWriter:
    """Collect tensors into shards of at most max_bytes (a larger tensor gets a shard of its own)."""

    def __init__(self, out_dir: str, max_bytes: int, metadata: Dict[str, str]):
        self.out_dir, self.max_bytes, self.metadata = out_dir, max_bytes, metadata
        self.pending: Dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: List[List[str]] = []

    def add(self, name: str, t: torch.Tensor):
        size = t.numel() * t.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self._flush()
        self.pending[name] = t.detach().to("cpu").contiguous()
        self.pending_bytes += size

    def _flush(self):
        save_file(self.pending, os.path.join(self.out_dir, f".shard-{len(self.shards)}.tmp"), self.metadata)
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def finish(self):
        """Name the shards model.safetensors, or model-0000i-of-0000n.safetensors plus the index."""
        if self.pending or not self.shards:
            self._flush()
        n = len(self.shards)
        names = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for i, fname in enumerate(names):
            os.replace(os.path.join(self.out_dir, f".shard-{i}.tmp"), os.path.join(self.out_dir, fname))
        if n > 1:
            weight_map = {t: names[i] for i, shard in enumerate(self.shards) for t in shard}
            with open(os.path.join(self.out_dir, INDEX_FILE), "w", encoding="utf-8") as f:
                json.dump({"metadata": dict(self.metadata), "weight_map": weight_map}, f, indent=2)


def quantize(model_dir: Union[str, os.PathLike], out_dir: Union[str, os.PathLike], format: str,
             group_size: int = 128, quantize_head: bool = False, zero_point: bool = True,
             max_shard_bytes: int = 4 * 2 ** 30, progress=None) -> str:
    """Write a quantized copy of the bf16/fp32 checkpoint `model_dir` to `out_dir` (created; it must
    not hold weights already) and return out_dir. Reads and quantizes one tensor at a time; host
    memory peaks near one shard plus one tensor. Engine.from_pretrained(out_dir) loads it as stored.
    Tokenizer and other non-weight files are copied."""
    model_dir, out_dir = os.fspath(model_dir), os.fspath(out_dir)
    cfg = ModelConfig.from_dir(model_dir)
    if read_section(model_dir) is not None or foreign_method(model_dir) is not None:
        raise ValueError(f"{model_dir} is already quantized; quantize its unquantized source instead")
    spec = QuantSpec(format, group_size, bool(zero_point), bool(quantize_head))
    check_spec(cfg, spec, torch.device("cpu"))
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    if os.path.isdir(out_dir):
        if os.path.samefile(out_dir, model_dir):
            raise ValueError(f"out_dir {out_dir} is the source checkpoint; write the quantized one elsewhere")
        held = [n for n in os.listdir(out_dir) if n.endswith(_WEIGHT_SUFFIXES) or n == INDEX_FILE]
        if held:
            raise ValueError(f"{out_dir} already holds weights ({held[0]}); choose an empty or new directory")
    os.makedirs(out_dir, exist_ok=True)

    writer = _ShardWriter(out_dir, max_shard_bytes, {"format": "pt", "quantization": json.dumps(spec.to_section())})
    named = iter_weights(model_dir, cfg, None, progress)
    for name, t in quantize_stream(named, cfg, spec, None, torch.device("cpu")):
        if isinstance(t, QuantizedWeight):
            for part, tensor in t.parts():
                writer.add(f"{_base(name)}.{part}", tensor)
        else:
            writer.add(name, t)
    writer.finish()

    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)
    raw["quantization"] = spec.to_section()
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(raw, f, indent=2)
    for entry in sorted(os.listdir(model_dir)):
        src = os.path.join(model_dir, entry)
        if os.path.isfile(src) and entry != "config.json" and entry != INDEX_FILE \
                and not entry.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(src, os.path.join(out_dir, entry))
    return out_dir
