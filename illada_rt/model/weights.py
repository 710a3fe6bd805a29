"""The model's weights: named tensors packed into LayerWeights as they arrive, and their byte count.

Packing concatenates q/k/v into one [(H + 2 Hkv) * hd, d] matrix and the SwiGLU gate/up pair
into one [2F, d] matrix, so each block runs three matmuls plus the output projection. The
names are the checkpoint's public ones (config.expected_shapes); where they come from (files,
quantization at load, random draws in a benchmark) is loading's business.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Tuple, Union

import torch

from ..config import PREFIX, ModelConfig
from ..quant.formats import QuantizedWeight, cat_rows

Matrix = Union[torch.Tensor, QuantizedWeight]  # a dense [N, K] weight or its quantized form
Named = Iterable[Tuple[str, Union[torch.Tensor, QuantizedWeight]]]  # (public name, tensor) pairs


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor   # [d]
    wqkv: Matrix              # [(H + 2 Hkv) * hd, d]
    wo: Matrix                # [d, d]
    ff_norm: torch.Tensor     # [d]
    w_gate_up: Matrix         # [2F, d]
    w_down: Matrix            # [d, F]


def _cat_rows(parts: List[Matrix]) -> Matrix:
    return cat_rows(parts) if isinstance(parts[0], QuantizedWeight) else torch.cat(parts)


def pack_weights(cfg: ModelConfig, named: Named) -> Tuple[torch.Tensor, List[LayerWeights], torch.Tensor, Matrix]:
    """(wte [E, d], layers, ln_f [d], head [E, d]) from (public name, tensor) pairs, packed layer by
    layer as they arrive: a layer's tensors are concatenated once all nine are in, so at most one
    layer is held twice."""
    pending, layers, top = {}, {}, {}
    for name, t in named:
        if not name.startswith(PREFIX + "blocks."):
            top[name[len(PREFIX):]] = t
            continue
        idx, leaf = name[len(PREFIX + "blocks."):].split(".", 1)
        group = pending.setdefault(int(idx), {})
        group[leaf] = t
        if len(group) == 9:
            g = pending.pop(int(idx))
            layers[int(idx)] = LayerWeights(
                attn_norm=g["attn_norm.weight"],
                wqkv=_cat_rows([g["q_proj.weight"], g["k_proj.weight"], g["v_proj.weight"]]),
                wo=g["attn_out.weight"], ff_norm=g["ff_norm.weight"],
                w_gate_up=_cat_rows([g["ff_proj.weight"], g["up_proj.weight"]]),
                w_down=g["ff_out.weight"])
    if pending or sorted(layers) != list(range(cfg.n_layers)):
        raise ValueError(f"incomplete layers: have {sorted(layers)}, partial {sorted(pending)}")
    # a tied checkpoint may still bring its own (quantized) head: see loading/quantize_at_load.py
    head = top["ff_out.weight"] if "ff_out.weight" in top else top["wte.weight"]
    return top["wte.weight"], [layers[i] for i in range(cfg.n_layers)], top["ln_f.weight"], head


def weight_bytes(model) -> Dict[str, int]:
    """Bytes of an LLaDAModel's weights (its wte, layers, ln_f, head): "quantized" (codes, scales,
    zeros), "dense" (the rest), "total". A tied dense head shares the embedding and is counted once."""
    mats = [model.head] + [m for w in model.layers for m in (w.wqkv, w.wo, w.w_gate_up, w.w_down)]
    dense = [model.wte, model.ln_f] + [t for w in model.layers for t in (w.attn_norm, w.ff_norm)]
    out = {"quantized": 0, "dense": 0}
    for m in mats:
        if isinstance(m, QuantizedWeight):
            out["quantized"] += m.nbytes
        elif m is not model.wte:
            dense.append(m)
    out["dense"] = sum(t.numel() * t.element_size() for t in dense)
    out["total"] = out["quantized"] + out["dense"]
    return out
