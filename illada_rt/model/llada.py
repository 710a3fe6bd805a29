"""The runtime's LLaDA forward: torch matmuls, fused kernels from illada_rt.ops for the rest.

The weights arrive packed (weights.py: q/k/v in one matrix, the SwiGLU gate/up pair in another),
dense or quantized; every matmul goes through linear.py. The model knows nothing about files.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.distributed as dist

from .. import ops
from ..config import ModelConfig
from ..ops import Kernels, select_kernels
from .linear import linear, rmsnorm_into
from .shard import ModelShard
from .weights import LayerWeights, Matrix, Named, pack_weights

KVCache = List[Tuple[torch.Tensor, torch.Tensor]]  # per layer (K, V), each [B, L, Hkv, hd] after RoPE
RowSelect = Union[None, slice, torch.Tensor]         # rows of the final layer: all, a span, or [Lr] int64 positions


class LLaDAModel:
    def __init__(self, cfg: ModelConfig, wte: torch.Tensor, layers: List[LayerWeights], ln_f: torch.Tensor,
                 head: Matrix, kernels: Optional[Kernels] = None, shard: Optional[ModelShard] = None):
        self.cfg = cfg
        self.wte, self.layers, self.ln_f, self.head = wte, layers, ln_f, head
        # tensor parallelism (shard.py): this rank's heads, FFN columns and vocabulary rows; None: all
        self.shard = shard
        self.heads = cfg.n_heads if shard is None else shard.heads
        self.kv_heads = cfg.n_kv_heads if shard is None else shard.kv_heads
        self.ffn = cfg.mlp_hidden_size if shard is None else shard.ffn
        self.dtype, self.device = wte.dtype, wte.device
        # the op implementations (compiled or torch twin, per family); None: $ILLADA_KERNELS or "auto"
        self.kernels = select_kernels(None, self.device) if kernels is None else kernels
        # RoPE cos/sin [positions, head_dim / 2] float32 each: empty until a forward needs positions,
        # then grown to the longest sequence run (ensure_positions), never max_sequence_length up front
        self.rope_cos = self.rope_sin = torch.empty(0, cfg.head_dim // 2, dtype=torch.float32, device=self.device)

    @classmethod
    def from_weights(cls, cfg: ModelConfig, named: Named, kernels: Optional[Kernels] = None,
                     shard: Optional[ModelShard] = None) -> "LLaDAModel":
        """The model of (public name, tensor) pairs, packed as they arrive (see weights.pack_weights);
        loading.load_model builds the pairs from a checkpoint directory (with a shard: the rank's slices)."""
        wte, layers, ln_f, head = pack_weights(cfg, named)
        return cls(cfg, wte, layers, ln_f, head, kernels, shard)

    def ensure_positions(self, length: int) -> None:
        """Grow the RoPE tables to cover positions [0, length): to at least twice their rows, so a
        run of growing requests rebuilds them O(log L) times, and at most max_sequence_length.
        New tensors replace the old ones, so a CUDA graph must not capture a growth (its replays
        would read the tables it captured): the graph runner calls this before capturing, and
        keeps the tables a graph captured alive with it (decoding/graph/capture.py)."""
        have = self.rope_cos.shape[0]
        if length <= have:
            return
        cfg = self.cfg
        if length > cfg.max_sequence_length:
            raise ValueError(f"{length} positions exceed max_sequence_length {cfg.max_sequence_length}")
        if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"the RoPE tables ({have} positions) must grow to {length} during a CUDA graph "
                               "capture; call ensure_positions before capturing")
        rows = min(max(length, 2 * have), cfg.max_sequence_length)
        self.rope_cos, self.rope_sin = (t.to(self.device) for t in ops.rope_table(cfg.head_dim, rows, cfg.rope_theta))

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
        hd, H, Hkv = cfg.head_dim, self.heads, self.kv_heads         # this rank's heads (all without a shard)
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
        o = self._reduce(linear(kern, att.view(B, -1, H * hd), w.wo))   # [B, Lq, d]
        h_rows = rmsnorm_into(kern, w.w_gate_up, o, w.ff_norm, cfg.rms_norm_eps, residual=x_rows)  # x_rows += o
        gate_up = linear(kern, h_rows, w.w_gate_up)              # [B, Lq, 2F]
        f = self.ffn
        act = kern.swiglu(gate_up[..., :f], gate_up[..., f:])
        return x_rows, self._reduce(linear(kern, act, w.w_down))

    def _reduce(self, partial: torch.Tensor) -> torch.Tensor:
        """A row-parallel matmul's result: this rank's partial sum, summed over the ranks."""
        return partial if self.shard is None else self.shard.all_reduce(partial)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """[..., d] embedding rows of tokens; with a shard each rank contributes the rows it holds."""
        if self.shard is None:
            return self.kernels.embedding(tokens, self.wte)
        local = tokens - self.shard.vocab_start
        held = (local >= 0) & (local < self.shard.vocab_rows)
        x = self.kernels.embedding(local.clamp(0, self.shard.vocab_rows - 1), self.wte)
        return self.shard.all_reduce(x.masked_fill_(~held[..., None], 0))

    def hidden(self, tokens: torch.Tensor, key_mask: Optional[torch.Tensor], rows: RowSelect = None,
               cache: Optional[KVCache] = None, pos0: int = 0):
        """Final-normed hidden states [B, Lr, d] of `rows` (all rows when None).

        tokens [B, Lx] are canvas positions [pos0, pos0 + Lx); with a cache they may be a
        slice of the canvas (see _block), without one they are the whole canvas.
        """
        cfg, kern = self.cfg, self.kernels
        self.ensure_positions(pos0 + tokens.shape[1])            # RoPE rows for positions [pos0, pos0 + Lx)
        x = self._embed(tokens)                                  # [B, Lx, d] residual stream
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
        """LM-head outputs [B, Lr, E] in the model dtype for `rows` (see hidden): E = embedding_size,
        or with a shard this rank's vocabulary slice of it (full_logits gathers them)."""
        return self.head_logits(self.hidden(tokens, key_mask, rows, cache, pos0))

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on final-normed hidden states [..., d] -> [..., E] (with a shard: its slice)."""
        return linear(self.kernels, hidden, self.head)

    def full_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [..., E] whole: with a shard, every rank's vocabulary slice gathered (each rank
        gets them all); without one, logits itself."""
        if self.shard is None:
            return logits
        per, E = self.shard.vocab_per_rank, self.cfg.embedding_size
        padded = torch.nn.functional.pad(logits, (0, per - logits.shape[-1]))        # equal widths to gather
        parts = self.shard.all_gather(padded)                                          # [N, ..., per]
        return torch.cat(list(parts.unbind(0)), dim=-1)[..., :E]

    def target_logprobs(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log softmax(logits over the generable vocabulary)[targets] in float32: logits [..., E] (with
        a shard: this rank's slice; the softmax still runs over every rank's), targets [...] int64."""
        V = self.cfg.vocab_size
        if self.shard is None:
            logp = torch.nn.functional.log_softmax(logits.float()[..., :V], dim=-1)
            return torch.gather(logp, -1, targets[..., None]).squeeze(-1)
        start = self.shard.vocab_start
        l = logits.float()[..., : max(0, min(V - start, logits.shape[-1]))]          # the generable part held
        top = l.amax(-1) if l.shape[-1] else torch.full(l.shape[:-1], float("-inf"), device=l.device)
        top = self.shard.all_reduce(top, dist.ReduceOp.MAX)
        total = self.shard.all_reduce(torch.exp(l - top[..., None]).sum(-1))          # sum of exp over V
        local = targets - start
        held = (local >= 0) & (local < l.shape[-1])
        picked = torch.gather(l, -1, local.clamp(0, max(l.shape[-1] - 1, 0))[..., None]).squeeze(-1) \
            if l.shape[-1] else torch.zeros_like(top)
        target = self.shard.all_reduce(torch.where(held, picked, torch.zeros_like(picked)))
        return target - top - torch.log(total)

    # ------------------------------------------------------------ block KV cache

    def new_cache(self, batch: int, length: int) -> KVCache:
        """Uninitialised per-layer (K, V), each [batch, length, Hkv, hd] in the model dtype."""
        shape = (batch, length, self.kv_heads, self.cfg.head_dim)
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
