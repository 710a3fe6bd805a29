"""Write a quantized checkpoint (illada_rt.quantize, `illada-rt convert`) from a bf16/fp32 one.

The layout is quantized.py's (which reads it back): dense tensors under their names, each
quantized matrix as its parts, config.json with a "quantization" section. Files above
max_shard_bytes are split into shards with a model.safetensors.index.json, as safetensors.weight_files reads them.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Union

import torch
from safetensors.torch import save_file

from ..quant.formats import QuantizedWeight
from ..quant.spec import QuantSpec, check_spec
from .checkpoint import Checkpoint
from .dense import iter_weights
from .quantize_at_load import quantize_stream
from .quantized import part_name
from .safetensors import INDEX_FILE, SINGLE_FILE, check_stored_layers

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


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
    ckpt = Checkpoint.open(model_dir)
    cfg = ckpt.cfg
    if ckpt.quantization is not None or ckpt.foreign_method is not None:
        raise ValueError(f"{model_dir} is already quantized; quantize its unquantized source instead")
    check_stored_layers(model_dir, cfg.n_layers)
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
                writer.add(part_name(name, part), tensor)
        else:
            writer.add(name, t)
    writer.finish()

    raw = dict(ckpt.raw, quantization=spec.to_section())
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(raw, f, indent=2)
    for entry in sorted(os.listdir(model_dir)):
        src = os.path.join(model_dir, entry)
        if os.path.isfile(src) and entry != "config.json" and entry != INDEX_FILE \
                and not entry.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(src, os.path.join(out_dir, entry))
    return out_dir
