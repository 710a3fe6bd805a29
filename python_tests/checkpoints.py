"""Tiny random LLaDA checkpoints in the real on-disk format (config.json + safetensors).

Two layouts, as the real models: "llada" (MHA, untied head, padded embedding rows,
mask id near the end of the vocabulary) and "illada" (GQA, tied embeddings, mask id 5).
Weights are scaled so logits spread over several units, as a trained model's do:
the confidence order is then decided by the model, not by float rounding.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

LAYOUTS = {
    "llada": dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=96, vocab_size=250,
                  embedding_size=256, weight_tying=False, mask_token_id=246, eos_token_id=247, pad_token_id=247),
    "illada": dict(d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=112, vocab_size=300,
                   embedding_size=300, weight_tying=True, mask_token_id=5, eos_token_id=2, pad_token_id=1),
}


def make_config(layout: str, **overrides) -> dict:
    cfg = dict(model_type="llada", architectures=["LLaDAModelLM"], block_type="llama", activation_type="silu",
               layer_norm_type="rms", rope=True, alibi=False, include_bias=False, include_qkv_bias=False,
               rope_theta=10000.0, rms_norm_eps=1e-5, max_sequence_length=512, mlp_ratio=4)
    cfg.update(LAYOUTS[layout])
    cfg.update(overrides)
    return cfg


def make_weights(cfg: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    d, f = cfg["d_model"], cfg["mlp_hidden_size"]
    kv = cfg["n_kv_heads"] * d // cfg["n_heads"]

    def lin(rows, cols, gain=1.0):
        return torch.randn(rows, cols, generator=g) * (gain / cols ** 0.5)

    def norm(n):
        return 1.0 + 0.1 * torch.randn(n, generator=g)

    p = "model.transformer."
    w = {p + "wte.weight": 0.6 * torch.randn(cfg["embedding_size"], d, generator=g), p + "ln_f.weight": norm(d)}
    if not cfg["weight_tying"]:
        w[p + "ff_out.weight"] = lin(cfg["embedding_size"], d, gain=5.0)
    for i in range(cfg["n_layers"]):
        b = f"{p}blocks.{i}."
        w.update({b + "attn_norm.weight": norm(d), b + "ff_norm.weight": norm(d),
                  b + "q_proj.weight": lin(d, d, 2.0), b + "k_proj.weight": lin(kv, d, 2.0),
                  b + "v_proj.weight": lin(kv, d), b + "attn_out.weight": lin(d, d),
                  b + "ff_proj.weight": lin(f, d), b + "up_proj.weight": lin(f, d),
                  b + "ff_out.weight": lin(d, f)})
    return w


def write_checkpoint(path: str, layout: str = "llada", shards: int = 1, dtype=torch.float32, seed: int = 0,
                     **overrides) -> dict:
    """Write config.json and weights (one file, or `shards` files plus an index). Returns the config."""
    os.makedirs(path, exist_ok=True)
    cfg = make_config(layout, **overrides)
    weights = {k: v.to(dtype).contiguous() for k, v in make_weights(cfg, seed).items()}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if shards == 1:
        save_file(weights, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return cfg
    names = sorted(weights)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: weights[n] for n in names[s::shards]}
        save_file(part, os.path.join(path, fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
    return cfg


# A word-level tokenizer for text tests: special tokens first, then "w0".."w199".
WORDS = ["<pad>", "<eos>", "<bos>", "<mask>", "<|user|>", "<|assistant|>"] + [f"w{i}" for i in range(200)]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def write_text_checkpoint(path: str, chat_template: str = CHAT_TEMPLATE) -> dict:
    """A tiny checkpoint with tokenizer.json and tokenizer_config.json (mask "<mask>" = 3, eos 1, pad 0)."""
    cfg = write_checkpoint(path, "llada", vocab_size=len(WORDS), embedding_size=len(WORDS) + 2, mask_token_id=3,
                           eos_token_id=1, pad_token_id=0)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(WORDS[:6])
    tok.save(os.path.join(path, "tokenizer.json"))
    tok_cfg = {"bos_token": "<bos>", "eos_token": {"content": "<eos>"}, "pad_token": "<pad>", "mask_token": "<mask>"}
    if chat_template:
        tok_cfg["chat_template"] = chat_template
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f)
    return cfg
