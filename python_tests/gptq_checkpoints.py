"""Tiny 4-bit GPTQ checkpoints (Hugging Face layout) written from known codes, zero points and scales,
with the float weights they stand for: shared by loading/test_quant_gptq.py and
loading/test_loading_checkpoint.py."""
import json
import os

import torch
from safetensors.torch import save_file

from checkpoints import make_config, make_weights
from illada_rt.quant.formats import QuantizedWeight, dequantize
from illada_rt.quant.spec import BLOCK_MATRICES

GROUP = 32


def pack_int32(codes: torch.Tensor, dim: int) -> torch.Tensor:
    """uint8 4-bit codes -> int32 words of eight along dim (lowest bits first), as GPTQ packs them."""
    c = codes.to(torch.int64).movedim(dim, -1)
    c = c.reshape(*c.shape[:-1], c.shape[-1] // 8, 8)
    words = (c << torch.arange(0, 32, 4)).sum(-1)
    words = torch.where(words >= 2 ** 31, words - 2 ** 32, words)            # two's complement int32
    return words.to(torch.int32).movedim(-1, dim).contiguous()


def gptq_linear(w: torch.Tensor, g: torch.Generator, version: str):
    """GPTQ tensors for w [N, K] (random codes near w's scale) and the float weight they stand for."""
    n, k = w.shape
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    zero = torch.randint(1, 16, (n, k // GROUP), generator=g)                 # v1 cannot store zero 0
    scales = (w.abs().amax(1, keepdim=True) / 7 * (0.5 + torch.rand(n, k // GROUP, generator=g))).half()
    stored_zero = zero - 1 if version == "gptq" else zero
    parts = {"qweight": pack_int32(codes.t(), 0), "qzeros": pack_int32(stored_zero.t().to(torch.uint8), 1),
             "scales": scales.t().contiguous(), "g_idx": (torch.arange(k) // GROUP).to(torch.int32)}
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    dense = dequantize(QuantizedWeight("int4", packed, scales.float(), zero.float(), GROUP))
    return parts, dense


def write_gptq(path, version="gptq", **qc_overrides):
    os.makedirs(path, exist_ok=True)
    cfg = make_config("llada")
    qc = {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": False, "sym": False,
          "checkpoint_format": version}
    qc.update(qc_overrides)
    cfg["quantization_config"] = qc
    g = torch.Generator().manual_seed(7)
    tensors, state = {}, {}
    for name, w in make_weights(cfg).items():
        leaf = name.split(".")[-2]
        if ".blocks." in name and leaf in BLOCK_MATRICES:
            parts, dense = gptq_linear(w, g, version)
            tensors.update({name[: -len("weight")] + p: t for p, t in parts.items()})
            state[name] = dense
        else:
            tensors[name] = w
            state[name] = w
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return state
