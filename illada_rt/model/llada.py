"""The runtime's LLaDA forward: torch matmuls, fused kernels from illada_rt.ops for the rest.

The weights arrive packed (weights.py: q/k/v in one matrix, the SwiGLU gate/up pair in another),
dense or quantized; every matmul goes through linear.py. The model knows nothing about files.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch

from .. import ops
from ..config import ModelConfig
from ..ops import Kernels, select_kernels
from .linear import linear, rmsnorm_into
from .weights import LayerWeights, Matrix, Named, pack_weights

KVCache = List[Tuple[torch.Tensor, torch.Tensor]]  # per layer (K, V), each [B, L, Hkv, hd] after RoPE
RowSelect = Union[None, slice, torch.Tensor]         # rows of the final layer: all, a span, or [Lr] int64 positions


class LLaDAModel:
    def __init__(self, cfg: ModelConfig, wte: torch.Tensor, layers: List[LayerWeights], ln_f: torch.Tensor,
                 head: Matrix, kernels: Optional[Kernels] = None):
        self.cfg = cfg
        self.wte, self.layers, self.ln_f, self.head = wte, layers, ln_f, head
        self.dtype, self.device = wte.dtype, wte.device
        # the op implementations (compiled or torch twin, per family); None: $ILLADA_KERNELS or "auto"
        self.kernels = select_kernels(None, self.device) if kernels is None else kernels
        # [max_sequence_length, head_dim / 2] float32 each, beside the weights
        self.rope_cos, self.rope_sin = (t.to(self.device) for t in
                                        ops.rope_table(cfg.head_dim, cfg.max_sequence_length, cfg.rope_theta))

    @classmethod
    def from_weights(cls, cfg: ModelConfig, named: Named, kernels: Optional[Kernels] = None) -> "LLaDAModel":
        """The model of (public name, tensor) pairs, packed as they arrive (see weights.pack_weights);
        loading.load_model builds the pairs from a checkpoint directory."""
        wte, layers, ln_f, head = pack_weights(cfg, named)
        return cls(cfg, wte, layers, ln_f, head, kernels)

    def _block(self, w: LayerWeights, x: torch.Tensor, h: torch.Tensor, key_mask: Optional[torch.Tensor],
               rows: RowSelect, pos0: int = 0, kv: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        """One transformer block on the residual stream x [B, Lx, d] of canvas positions
        [pos0, pos0 + Lx), given h = attn_norm(x).

        Returns (x_rows, ffn): the residual stream of the computed rows after attention
        (x itself, updated in place, when rows is None) and the FFN output still to be
        added to it. With `rows` (absolute positions inside [pos0, pos0 + Lx): a slice, or an
        int64 index tensor [Lq] whose values stay on the device), only those query rows are
        computed; keys and values still cover every row: exact for the rows kept.
        kv: this layer's cache (K, V), each [B, L, Hkv, hd] after RoPE: the rows' fresh K/V
        overwrite positions [pos0, pos0 + Lx) and the queries attend to all L cached keys.
        Without it the keys are the rows' own (then x must be the whole sequence, pos0 = 0).
        """
        cfg, kern = self.cfg, self.kernels
        B, Lx, _ = x.shape
        hd, H, Hkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        qkv = linear(kern, h, w.wqkv).view(B, Lx, H + 2 * Hkv, hd)  # [B, Lx, H + 2 Hkv, hd]
        q, k, v = qkv[:, :, :H], qkv[:, :, H:H + Hkv], qkv[:, :, H + Hkv:]
        kern.rope_(k, self.rope_cos, self.rope_sin, position_start=pos0)
        if kv is not None:
            kv[0][:, pos0:pos0 + Lx] = k
            kv[1][:, pos0:pos0 + Lx] = v
            k, v = kv                                            # [B, L, Hkv, hd]
        if isinstance(rows, torch.Tensor):  # [Lq] int64 positions, read on the device (CUDA-graph safe)
            q, x_rows = q.index_select(1, rows - pos0), x.index_select(1, rows - pos0)
            kern.rope_(q, self.rope_cos.index_select(0, rows), self.rope_sin.index_select(0, rows))
        else:
            local = slice(0, Lx) if rows is None else slice(rows.start - pos0, rows.stop - pos0)
            if rows is not None:
                q = q[:, local]
            kern.rope_(q, self.rope_cos, self.rope_sin, position_start=pos0 + local.start)
            x_rows = x if rows is None else x[:, local].contiguous()
        att = kern.attention(q, k, v, key_mask)                  # [B, Lq, H, hd]
        o = linear(kern, att.view(B, -1, cfg.d_model), w.wo)     # [B, Lq, d]
        h_rows = rmsnorm_into(kern, w.w_gate_up, o, w.ff_norm, cfg.rms_norm_eps, residual=x_rows)  # x_rows += o
        gate_up = linear(kern, h_rows, w.w_gate_up)              # [B, Lq, 2F]
        f = cfg.mlp_hidden_size
        act = kern.swiglu(gate_up[..., :f], gate_up[..., f:])
        return x_rows, linear(kern, act, w.w_down)

    def hidden(self, tokens: torch.Tensor, key_mask: Optional[torch.Tensor], rows: RowSelect = None,
               cache: Optional[KVCache] = None, pos0: int = 0):
        """Final-normed hidden states [B, Lr, d] of `rows` (all rows when None).

        tokens [B, Lx] are canvas positions [pos0, pos0 + Lx); with a cache they may be a
        slice of the canvas (see _block), without one they are the whole canvas.
        """
        cfg, kern = self.cfg, self.kernels
        x = kern.embedding(tokens, self.wte)                     # [B, Lx, d] residual stream
        h = rmsnorm_into(kern, self.layers[0].wqkv, x, self.layers[0].attn_norm, cfg.rms_norm_eps)
        last = len(self.layers) - 1
        for i, w in enumerate(self.layers):
            kv = None if cache is None else cache[i]
            x_rows, ffn = self._block(w, x, h, key_mask, rows if i == last else None, pos0, kv)
            if i < last:
                h = rmsnorm_into(kern, self.layers[i + 1].wqkv, ffn, self.layers[i + 1].attn_norm,
                                 cfg.rms_norm_eps, residual=x)
        return kern.rmsnorm(ffn, self.ln_f, cfg.rms_norm_eps, residual=x_rows)

    def logits(self, tokens: torch.Tensor, key_mask: Optional[torch.Tensor], rows: RowSelect = None,
               cache: Optional[KVCache] = None, pos0: int = 0):
        """LM-head outputs [B, Lr, embedding_size] in the model dtype for `rows` (see hidden)."""
        return linear(self.kernels, self.hidden(tokens, key_mask, rows, cache, pos0), self.head)

    # ------------------------------------------------------------ block KV cache

    def new_cache(self, batch: int, length: int) -> KVCache:
        """Uninitialised per-layer (K, V), each [batch, length, Hkv, hd] in the model dtype."""
        shape = (batch, length, self.cfg.n_kv_heads, self.cfg.head_dim)
        return [(torch.empty(shape, dtype=self.dtype, device=self.device),
                 torch.empty(shape, dtype=self.dtype, device=self.device)) for _ in self.layers]

    def prefill(self, tokens: torch.Tensor, key_mask: Optional[torch.Tensor], rows: slice,
                cache: Optional[KVCache] = None):
        """Full forward over the canvas tokens [B, L] that also (re)fills a KV cache.

        Returns (logits [B, Lr, E] of `rows`, cache); the exact logits of a normal step.
        """
        if cache is None:
            cache = self.new_cache(*tokens.shape)
        return self.logits(tokens, key_mask, rows, cache), cache

    def block_step(self, tokens: torch.Tensor, cache: KVCache, pos0: int, key_mask: Optional[torch.Tensor],
                   rows: slice):
        """Recompute canvas positions [pos0, pos0 + Lx) only (tokens [B, Lx]) against the cache.

        Their fresh K/V replace the cached entries; every other position keeps the K/V of
        the last prefill. Returns logits [B, Lr, E] of `rows` (inside the recomputed range).
        """
        return self.logits(tokens, key_mask, rows, cache, pos0)
