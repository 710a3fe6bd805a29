"""A checkpoint directory as its config.json describes it, read once per load.

Checkpoint.open parses config.json (config.read_config_json, the one reader of the file) and
keeps everything a load needs from it: the ModelConfig, illada_rt's own "quantization" section
(written by loading/writer.py) and another library's quantization method (GPTQ's
quantization_config). The weights themselves are read by the streams (dense.py, quantized.py,
gptq.py) through safetensors.TensorReader.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

from ..config import ModelConfig, read_config_json
from ..quant.formats import FORMATS
from ..quant.spec import SECTION_VERSION, QuantSpec
from .errors import CheckpointError


@dataclass(frozen=True)
class Checkpoint:
    model_dir: str
    config_path: str
    raw: dict                            # config.json as parsed (the writer copies it)
    cfg: ModelConfig
    quantization: Optional[QuantSpec]    # the "quantization" section of a checkpoint written by quantize()
    foreign_method: Optional[str]        # quantization_config.quant_method of another library ("gptq")

    @classmethod
    def open(cls, model_dir: Union[str, os.PathLike]) -> "Checkpoint":
        """ConfigError for a missing, malformed or unsupported config.json; CheckpointError for a
        quantization section illada_rt cannot read (another library's, except 4-bit GPTQ, see gptq.py)."""
        model_dir = os.fspath(model_dir)
        raw, path = read_config_json(model_dir)
        cfg = ModelConfig.from_dict(raw, source=path)
        method = foreign_method(raw, path)
        if method is not None and method != "gptq":
            raise CheckpointError(f"{path}: quantization_config (quant_method {method!r}) is another library's "
                                  "format; illada_rt reads its own quantized checkpoints (illada-rt convert) and 4-bit "
                                  "GPTQ, or quantizes a bf16/fp32 checkpoint at load (quantization=...)")
        stored = None if "quantization" not in raw else spec_from_section(raw["quantization"], path)
        return cls(model_dir, path, raw, cfg, stored, method)


def foreign_method(raw: dict, source: str = "config.json") -> Optional[str]:
    """quant_method of another library's quantization_config ("gptq", ...) in config.json's `raw`,
    None without one."""
    if "quantization_config" not in raw or "quantization" in raw:
        return None
    section = raw["quantization_config"] or {}
    if not isinstance(section, dict):
        raise CheckpointError(f"{source}: quantization_config must be an object, got {section!r:.60}")
    return str(section.get("quant_method", "unknown"))


def spec_from_section(raw, source: str) -> QuantSpec:
    """The QuantSpec of config.json's "quantization" section (QuantSpec.to_section read back)."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: \"quantization\" must be an object, got {raw!r}")
    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise CheckpointError(f"{source}: quantization.format {fmt!r} is not one of {list(FORMATS)}")
    group = raw.get("group_size")
    if fmt == "int4" and (not isinstance(group, int) or isinstance(group, bool) or group <= 0 or group % 2):
        raise CheckpointError(f"{source}: quantization.group_size {group!r} must be a positive even integer")
    for key in ("zero_point", "quantize_head"):
        if not isinstance(raw.get(key, False), bool):
            raise CheckpointError(f"{source}: quantization.{key} must be true or false, got {raw[key]!r}")
    if raw.get("version", SECTION_VERSION) != SECTION_VERSION:
        raise CheckpointError(f"{source}: quantization.version {raw['version']!r} is not supported "
                              f"(this illada_rt reads version {SECTION_VERSION})")
    return QuantSpec(fmt, group if fmt == "int4" else 128, bool(raw.get("zero_point", False)),
                     bool(raw.get("quantize_head", False)))


def read_section(model_dir: Union[str, os.PathLike]) -> Optional[QuantSpec]:
    """The stored QuantSpec of a checkpoint directory, None for an unquantized one (`illada-rt info`)."""
    return Checkpoint.open(model_dir).quantization
