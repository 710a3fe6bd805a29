"""The runtime's LLaDA forward: torch matmuls, fused kernels from illada_rt.ops for the rest.

Weights are packed at load time: q/k/v into one [(H + 2 Hkv) * hd, d] matrix and the
SwiGLU gate/up pair into one [2F, d] matrix, so each block runs three matmuls plus
the output projection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from . import ops
from .config import ModelConfig
from .loader import PREFIX, iter_weights


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor   # [d]
    wqkv: torch.Tensor        # [(H + 2 Hkv) * hd, d]
    wo: torch.Tensor          # [d, d]
    ff_norm: torch.Tensor     # [d]
    w_gate_up: torch.Tensor   # [2F, d]
    w_down: torch.Tensor      # [d, F]


class LLaDAModel:
    def __init__(self, cfg: ModelConfig, wte: torch.Tensor, layers: List[LayerWeights], ln_f: torch.Tensor,
                 head: torch.Tensor):
        self.cfg = cfg
        self.wte, self.layers, self.ln_f, self.head = wte, layers, ln_f, head
        self.dtype = wte.dtype
        self.rope_cos, self.rope_sin = ops.rope_table(cfg.head_dim, cfg.max_sequence_length, cfg.rope_theta)

    @classmethod
    def load(cls, model_dir: str, cfg: ModelConfig, dtype: torch.dtype) -> "LLaDAModel":
        """Stream the weights from a checkpoint directory (see loader.iter_weights)."""
        return cls.from_weights(cfg, iter_weights(model_dir, cfg, dtype))

    @classmethod
    def from_weights(cls, cfg: ModelConfig, named: Iterable[Tuple[str, torch.Tensor]]) -> "LLaDAModel":
        """Pack (public name, tensor) pairs layer by layer as they arrive: a layer's
        tensors are concatenated once all nine are in, so at most one layer is held twice."""
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
                    wqkv=torch.cat([g["q_proj.weight"], g["k_proj.weight"], g["v_proj.weight"]]),
                    wo=g["attn_out.weight"], ff_norm=g["ff_norm.weight"],
                    w_gate_up=torch.cat([g["ff_proj.weight"], g["up_proj.weight"]]),
                    w_down=g["ff_out.weight"])
        if pending or sorted(layers) != list(range(cfg.n_layers)):
            raise ValueError(f"incomplete layers: have {sorted(layers)}, partial {sorted(pending)}")
        head = top["wte.weight"] if cfg.weight_tying else top["ff_out.weight"]
        return cls(cfg, top["wte.weight"], [layers[i] for i in range(cfg.n_layers)], top["ln_f.weight"], head)

    def _block(self, w: LayerWeights, x: torch.Tensor, h: torch.Tensor, key_mask: Optional[torch.Tensor],
               rows: Optional[slice]) -> torch.Tensor:
        """One transformer block on the residual stream x [B, L, d] given h = attn_norm(x).

        Returns (x_rows, ffn): the residual stream of the computed rows after attention
        (x itself, updated in place, when rows is None) and the FFN output still to be
        added to it. With `rows`, only those query rows are computed (keys and values
        still cover the whole sequence): exact for the rows kept.
        """
        cfg = self.cfg
        B, L, _ = x.shape
        hd, H, Hkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        qkv = F.linear(h, w.wqkv).view(B, L, H + 2 * Hkv, hd)   # [B, L, H + 2 Hkv, hd]
        q, k, v = qkv[:, :, :H], qkv[:, :, H:H + Hkv], qkv[:, :, H + Hkv:]
        start = 0
        if rows is not None:
            q, start = q[:, rows], rows.start
        ops.rope_(q, self.rope_cos, self.rope_sin, position_start=start)
        ops.rope_(k, self.rope_cos, self.rope_sin)
        att = ops.attention(q, k, v, key_mask)                   # [B, Lq, H, hd]
        o = F.linear(att.view(B, -1, cfg.d_model), w.wo)         # [B, Lq, d]
        x_rows = x if rows is None else x[:, rows].contiguous()
        h_rows = ops.rmsnorm(o, w.ff_norm, cfg.rms_norm_eps, residual=x_rows)  # x_rows += o
        gate_up = F.linear(h_rows, w.w_gate_up)                  # [B, Lq, 2F]
        f = cfg.mlp_hidden_size
        act = ops.swiglu(gate_up[..., :f], gate_up[..., f:])
        return x_rows, F.linear(act, w.w_down)

    def hidden(self, tokens: torch.Tensor, key_mask: Optional[torch.Tensor], rows: Optional[slice] = None):
        """Final-normed hidden states [B, Lr, d] of `rows` (all rows when None)."""
        cfg = self.cfg
        x = F.embedding(tokens, self.wte)                        # [B, L, d] residual stream
        h = ops.rmsnorm(x, self.layers[0].attn_norm, cfg.rms_norm_eps)
        last = len(self.layers) - 1
        for i, w in enumerate(self.layers):
            x_rows, ffn = self._block(w, x, h, key_mask, rows if i == last else None)
            if i < last:
                h = ops.rmsnorm(ffn, self.layers[i + 1].attn_norm, cfg.rms_norm_eps, residual=x)
        return ops.rmsnorm(ffn, self.ln_f, cfg.rms_norm_eps, residual=x_rows)

    def logits(self, tokens: torch.Tensor, key_mask: Optional[torch.Tensor], rows: Optional[slice] = None):
        """LM-head outputs [B, Lr, embedding_size] in the model dtype for `rows`."""
        return F.linear(self.hidden(tokens, key_mask, rows), self.head)
