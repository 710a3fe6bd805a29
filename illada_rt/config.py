"""Model configuration read from a checkpoint's config.json, and the parameter names and shapes it implies.

Every architectural number comes from the file; nothing about LLaDA or iLLaDA is
hard-coded. Options the runtime cannot honour raise ConfigError instead of
silently building a different model. read_config_json is the one place that opens
config.json (loading.Checkpoint calls it once per load).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

# the bundled demo model (demo_model/TRAINING.md): the command line's default checkpoint
DEMO_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_model")


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
        for name in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size",
                     "vocab_size", "embedding_size", "max_sequence_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config.{name} must be positive, got {getattr(self, name)}")
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

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> "ModelConfig":
        for key, (ok, what) in _MUST_BE_OFF.items():
            if raw.get(key) not in ok:
                raise ConfigError(f"{source}: {key}={raw[key]!r} needs {what}, which illada_rt does not support")
        for key, ok in _MUST_EQUAL.items():
            if raw.get(key) not in ok:
                raise ConfigError(f"{source}: {key}={raw.get(key)!r} is not supported (expected one of {ok})")

        def need(key):
            if key not in raw or raw[key] is None:
                raise ConfigError(f"{source}: required key {key!r} is missing")
            return raw[key]

        n_heads = int(need("n_heads"))
        d_model = int(need("d_model"))
        mlp_hidden = raw.get("mlp_hidden_size")
        if mlp_hidden is None:
            mlp_hidden = int(need("mlp_ratio")) * d_model
        vocab = int(need("vocab_size"))
        return cls(
            d_model=d_model,
            n_heads=n_heads,
            n_kv_heads=int(raw.get("n_kv_heads") or n_heads),
            n_layers=int(need("n_layers")),
            mlp_hidden_size=int(mlp_hidden),
            vocab_size=vocab,
            embedding_size=int(raw.get("embedding_size") or vocab),
            rope_theta=float(need("rope_theta")),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
            weight_tying=bool(raw.get("weight_tying", False)),
            mask_token_id=int(need("mask_token_id")),
            eos_token_id=raw.get("eos_token_id"),
            pad_token_id=raw.get("pad_token_id"),
            max_sequence_length=int(need("max_sequence_length")),
        )

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
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return raw, path


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
