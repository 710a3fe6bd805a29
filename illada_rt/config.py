"""Model configuration read from a checkpoint's config.json, and the parameter names and shapes it implies.

Every architectural number comes from the file; nothing about LLaDA or iLLaDA is
hard-coded. Options the runtime cannot honour raise ConfigError instead of
silently building a different model. read_config_json is the one place that opens
config.json (loading.Checkpoint calls it once per load).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

# the bundled demo model (demo_model/TRAINING.md): the command line's default checkpoint
DEMO_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_model")
MAX_CONFIG_BYTES = 16 * 2 ** 20   # a config.json is a few KiB; a larger file is not one
MAX_POSITIONS = 2 ** 24           # float32 holds every integer position up to here (ops.rope_table)


class ConfigError(ValueError):
    """config.json is missing, malformed, or describes a model we cannot run."""


# Keys whose value must be "off" for the model to be a plain LLaMA-style LLaDA block.
# key -> (accepted values, what the runtime would need to support otherwise)
_MUST_BE_OFF = {
    "include_bias": ((False, None), "linear-layer biases"),
    "include_qkv_bias": ((False, None), "q/k/v biases"),
    "alibi": ((False, None), "ALiBi position biases"),
    "attention_layer_norm": ((False, None), "q/k layer norms"),
    "input_emb_norm": ((False, None), "an embedding norm"),
    "scale_logits": ((False, None), "scaled logits"),
    "clip_qkv": ((None,), "q/k/v clipping"),
    "multi_query_attention": ((False, None), "multi-query attention flag (use n_kv_heads)"),
}
_MUST_EQUAL = {
    "model_type": ("llada",),
    "block_type": ("llama", None),
    "activation_type": ("silu", "swiglu", None),
    "layer_norm_type": ("rms", None),
    "rope": (True, None),
}


@dataclass(frozen=True)
class ModelConfig:
    d_model: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    mlp_hidden_size: int
    vocab_size: int        # tokens that may be generated
    embedding_size: int    # rows of the embedding / LM head (>= vocab_size, padded)
    rope_theta: float
    rms_norm_eps: float
    weight_tying: bool
    mask_token_id: int
    eos_token_id: Optional[int]
    pad_token_id: Optional[int]
    max_sequence_length: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def num_parameters(self) -> int:
        d, f, hd = self.d_model, self.mlp_hidden_size, self.head_dim
        per_layer = d * d * 2 + 2 * d * self.n_kv_heads * hd + 3 * d * f + 2 * d
        head = 0 if self.weight_tying else self.embedding_size * d
        return self.embedding_size * d + self.n_layers * per_layer + d + head

    def __post_init__(self):
        for name in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "vocab_size",
                     "embedding_size", "max_sequence_length", "mask_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if not (value is None and name in ("eos_token_id", "pad_token_id")) and not _is_int(value):
                raise ConfigError(f"{name} must be an integer, got {_show(value)}")
        for name in ("rope_theta", "rms_norm_eps"):
            if not _is_number(getattr(self, name)):
                raise ConfigError(f"{name} must be a number, got {_show(getattr(self, name))}")
        if not isinstance(self.weight_tying, bool):
            raise ConfigError(f"weight_tying must be true or false, got {_show(self.weight_tying)}")
        for name in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size",
                     "vocab_size", "embedding_size", "max_sequence_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_sequence_length > MAX_POSITIONS:
            raise ConfigError(f"max_sequence_length {self.max_sequence_length} exceeds {MAX_POSITIONS}: RoPE positions "
                              "are float32, exact only up to 2**24")
        # RoPE angles are position * theta^(-2i/hd): a theta of 0, below 0 or NaN loads, then the
        # model repeats one token; an eps of 0 or NaN divides by zero in RMSNorm
        for name in ("rope_theta", "rms_norm_eps"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if self.embedding_size < self.vocab_size:
            raise ConfigError(f"embedding_size {self.embedding_size} < vocab_size {self.vocab_size}")
        if self.vocab_size < 2:
            raise ConfigError(f"vocab_size {self.vocab_size} leaves nothing to generate besides [MASK]")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ConfigError(f"mask_token_id {self.mask_token_id} is outside the vocabulary [0, {self.vocab_size})")
        for name in ("eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name} {value} is outside the vocabulary [0, {self.vocab_size})")
            if value == self.mask_token_id:
                # EOS fills the answer after a stop and padding must never read as a position to fill
                raise ConfigError(f"{name} {value} equals mask_token_id; the mask token cannot end or pad a sequence")

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> "ModelConfig":
        """The config of config.json's object `raw` (source: how errors name it). Every value is
        checked before anything is built from it: integers are JSON integers (5.9 and true are
        refused, not rounded), booleans are true/false, sizes are positive, rope_theta is finite and
        positive, special token ids lie inside the vocabulary and differ from the mask id."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        for key, (ok, what) in _MUST_BE_OFF.items():
            if not _one_of(raw.get(key), ok):
                raise ConfigError(f"{source}: {key}={_show(raw[key])} needs {what}, which illada_rt does not support")
        for key, ok in _MUST_EQUAL.items():
            if not _one_of(raw.get(key), ok):
                raise ConfigError(f"{source}: {key}={_show(raw.get(key))} is not supported (expected one of {ok})")

        def get(key, kind, required=True):
            """raw[key] checked to be a JSON `kind` ("integer", "number", "boolean"); None where it is
            absent or null and not required."""
            value = raw.get(key)
            if value is None:
                if required:
                    raise ConfigError(f"{source}: required key {key!r} is missing")
                return None
            ok = {"integer": _is_int, "number": _is_number, "boolean": lambda v: isinstance(v, bool)}[kind]
            if not ok(value):
                hint = " (a list of ids is not supported: give the one id that ends an answer)" \
                    if key.endswith("_token_id") and isinstance(value, list) else ""
                raise ConfigError(f"{source}: {key} must be {'an' if kind == 'integer' else 'a'} {kind}, "
                                  f"got {_show(value)}{hint}")
            return value

        n_heads, d_model, vocab = get("n_heads", "integer"), get("d_model", "integer"), get("vocab_size", "integer")
        mlp_hidden = get("mlp_hidden_size", "integer", required=False)
        if mlp_hidden is None:
            mlp_hidden = get("mlp_ratio", "integer") * d_model
        n_kv_heads, embedding = get("n_kv_heads", "integer", False), get("embedding_size", "integer", False)
        eps, tying = get("rms_norm_eps", "number", False), get("weight_tying", "boolean", False)
        values = dict(
            d_model=d_model,
            n_heads=n_heads,
            n_kv_heads=n_heads if n_kv_heads is None else n_kv_heads,
            n_layers=get("n_layers", "integer"),
            mlp_hidden_size=mlp_hidden,
            vocab_size=vocab,
            embedding_size=vocab if embedding is None else embedding,
            rope_theta=_as_float(get("rope_theta", "number")),
            rms_norm_eps=1e-5 if eps is None else _as_float(eps),
            weight_tying=False if tying is None else tying,
            mask_token_id=get("mask_token_id", "integer"),
            eos_token_id=get("eos_token_id", "integer", False),
            pad_token_id=get("pad_token_id", "integer", False),
            max_sequence_length=get("max_sequence_length", "integer"),
        )
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_dir(cls, model_dir: str) -> "ModelConfig":
        """The config of a checkpoint directory (loading.Checkpoint.open also keeps the rest of the file)."""
        raw, path = read_config_json(model_dir)
        return cls.from_dict(raw, source=path)


def read_config_json(model_dir: str) -> Tuple[dict, str]:
    """(config.json of `model_dir` as a dict, its path); ConfigError where it is missing or not a JSON object."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no config.json in the model directory")
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {os.path.getsize(path)} bytes; a config.json is at most {MAX_CONFIG_BYTES}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return raw, path


# ------------------------------------------------------------------ value checks

def _is_int(value) -> bool:
    """A JSON integer: int, never bool (true is not 1) nor float (5.9 is not 5, nor is 5.0)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_float(value) -> float:
    """float(value), with an integer too large for a float read as infinity (refused as not finite)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _one_of(value, accepted) -> bool:
    """value is one of `accepted` by type and value: 0 is not False, 1 is not True."""
    return any(type(value) is type(a) and value == a for a in accepted)


def _show(value) -> str:
    """repr(value), cut to a line: messages quote what the file says, however long it is."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------ public parameter names

PREFIX = "model.transformer."          # every parameter name of a LLaDA checkpoint starts with it


def expected_shapes(cfg: ModelConfig) -> Dict[str, Tuple[int, ...]]:
    """Public parameter name -> shape, for every tensor the model needs (the checkpoint's names;
    loading checks the files against it, the model packs what arrives by it)."""
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
