"""Models to benchmark: synthetic checkpoints of the real shapes (random weights drawn on the
device, no files), or a checkpoint directory; and the reference model on the same weights.

The synthetic token ids (mask, eos, pad) only need to lie in the vocabulary: random weights
make every token equally meaningless, and the timing does not depend on them.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, Iterator, Optional, Tuple

import torch
from safetensors.torch import save_file

from illada_rt import Engine, ModelConfig, reference
from illada_rt.config import PREFIX, expected_shapes
from illada_rt.model import LLaDAModel
from illada_rt.ops import select_kernels

_COMMON = dict(model_type="llada", rms_norm_eps=1e-5)
SYNTHETIC = {
    # CI-sized: 4 layers, d 256, GQA 4/2 heads of 64, tied head (4.0M parameters)
    "small": dict(_COMMON, d_model=256, n_heads=4, n_kv_heads=2, n_layers=4, mlp_hidden_size=704,
                  vocab_size=4096, embedding_size=4096, rope_theta=10000.0, weight_tying=True,
                  mask_token_id=3, eos_token_id=1, pad_token_id=0, max_sequence_length=2048),
    # LLaDA-8B: 32 layers, d 4096, 32 heads of 128 (MHA), FFN 12288, vocab 126464, untied head
    "llada-8b": dict(_COMMON, d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288,
                     vocab_size=126464, embedding_size=126464, rope_theta=500000.0, weight_tying=False,
                     mask_token_id=126336, eos_token_id=126081, pad_token_id=126081, max_sequence_length=4096),
    # iLLaDA-8B: 32 layers, d 4096, 32 query heads / 8 KV heads of 128 (GQA), FFN 14336, vocab 155136, tied
    "illada-8b": dict(_COMMON, d_model=4096, n_heads=32, n_kv_heads=8, n_layers=32, mlp_hidden_size=14336,
                      vocab_size=155136, embedding_size=155136, rope_theta=500000.0, weight_tying=True,
                      mask_token_id=155135, eos_token_id=155134, pad_token_id=155134, max_sequence_length=4096),
}


def synthetic_config(name: str, n_layers: int = 0) -> ModelConfig:
    raw = dict(SYNTHETIC[name])
    if n_layers:
        raw["n_layers"] = n_layers
    return ModelConfig.from_dict(raw, source=f"synthetic {name}")


def synthetic_weights(cfg: ModelConfig, dtype: torch.dtype, device: torch.device,
                      seed: int = 0) -> Iterator[Tuple[str, torch.Tensor]]:
    """(public name, tensor) pairs drawn one at a time on `device`, directly in `dtype` on CUDA:
    norms ~ 1 + 0.1 N(0, 1), linears N(0, 1/fan_in), the embedding N(0, 1)."""
    g = torch.Generator(device=device).manual_seed(seed)
    draw_dtype = dtype if device.type == "cuda" else torch.float32  # the CPU draws in float32, then casts
    for name, shape in expected_shapes(cfg).items():
        t = torch.randn(shape, generator=g, device=device, dtype=draw_dtype)
        if len(shape) == 1:
            t = t.mul_(0.1).add_(1.0)
        elif not name.endswith("wte.weight"):
            t = t.mul_(shape[-1] ** -0.5)
        yield name, t.to(dtype)


def shared_state(model: LLaDAModel) -> Dict[str, torch.Tensor]:
    """The engine's packed weights as the public state dict the reference reads: views, no copies."""
    cfg = model.cfg
    d, f, kv = cfg.d_model, cfg.mlp_hidden_size, cfg.n_kv_heads * cfg.head_dim
    state = {PREFIX + "wte.weight": model.wte, PREFIX + "ln_f.weight": model.ln_f}
    if not cfg.weight_tying:
        state[PREFIX + "ff_out.weight"] = model.head
    for i, w in enumerate(model.layers):
        p = f"{PREFIX}blocks.{i}."
        state.update({p + "attn_norm.weight": w.attn_norm, p + "ff_norm.weight": w.ff_norm,
                      p + "q_proj.weight": w.wqkv[:d], p + "k_proj.weight": w.wqkv[d:d + kv],
                      p + "v_proj.weight": w.wqkv[d + kv:], p + "attn_out.weight": w.wo,
                      p + "ff_proj.weight": w.w_gate_up[:f], p + "up_proj.weight": w.w_gate_up[f:],
                      p + "ff_out.weight": w.w_down})
    return state


def quantized(named, cfg: ModelConfig, fmt: str, dtype: torch.dtype, device: torch.device):
    """The weights quantized to `fmt` as they stream in, where this illada_rt has quantization at load."""
    try:
        from illada_rt.loading.quantize_at_load import quantize_stream
        from illada_rt.quant.spec import QuantSpec
    except ImportError as e:
        raise ValueError(f"quantization {fmt!r}: this illada_rt cannot quantize at load ({e})") from None
    return quantize_stream(named, cfg, QuantSpec(fmt), dtype, device)


def build(model_dir: str, synthetic: str, n_layers: int, dtype: torch.dtype, device: torch.device,
          engine_kwargs: Optional[dict] = None, quant: Optional[str] = None):
    """(engine, reference model on the same weights or None when quantized, label).
    engine_kwargs go to the Engine; quant: None or a format ("int8", "int4", "fp8")."""
    engine_kwargs = dict(engine_kwargs or {})
    kernels = engine_kwargs.pop("kernels", None)          # a kernel spec (ops/kernels.py), None: the default
    if model_dir:
        if quant:
            engine_kwargs["quantization"] = quant
        eng = Engine.from_pretrained(model_dir, device=str(device), dtype=dtype, kernels=kernels, **engine_kwargs)
        label = model_dir
    elif engine_kwargs.get("tensor_parallel", 1) > 1:
        # every rank reads its slices from a checkpoint: write the synthetic weights to one first
        folder = tempfile.TemporaryDirectory(prefix="illada-bench-")
        cfg = synthetic_config(synthetic, n_layers)
        write_checkpoint(folder.name, synthetic, cfg, synthetic_weights(cfg, dtype, torch.device("cpu")))
        if quant:
            engine_kwargs["quantization"] = quant
        eng = Engine.from_pretrained(folder.name, device=str(device), dtype=dtype, kernels=kernels, **engine_kwargs)
        eng.bench_folder = folder          # lives as long as the engine (ranks may still be reading it)
        label = f"synthetic {synthetic}" + (f" ({n_layers} layers)" if n_layers else "")
    else:
        cfg = synthetic_config(synthetic, n_layers)
        named = synthetic_weights(cfg, dtype, device)
        if quant:
            named = quantized(named, cfg, quant, dtype, device)
        eng = Engine(LLaDAModel.from_weights(cfg, named, select_kernels(kernels, device)), **engine_kwargs)
        label = f"synthetic {synthetic}" + (f" ({n_layers} layers)" if n_layers else "")
    tp = engine_kwargs.get("tensor_parallel", 1) > 1           # a rank holds a shard: no reference on it
    ref = None if quant or tp else reference.ReferenceModel(eng.cfg, shared_state(eng.model))
    return eng, ref, label


def write_checkpoint(folder: str, name: str, cfg: ModelConfig, named) -> None:
    """A checkpoint directory (config.json + model.safetensors) of synthetic weights."""
    raw = dict(SYNTHETIC[name], n_layers=cfg.n_layers, block_type="llama", activation_type="silu",
               layer_norm_type="rms", rope=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(raw, f)
    save_file({n: t.contiguous() for n, t in named}, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
