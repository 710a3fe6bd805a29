"""FLOPs and bytes of one denoising step, from the model shape alone (no timing here).

A forward is described by four row counts of a batch of B canvases of length L:

    rows       rows fed to the model (their q/k/v are computed in every layer)
    keys       keys every query attends to (the canvas, L, in every mode)
    last_rows  query rows that go through the last layer's attention output and FFN
    head_rows  rows that go through the final norm and the LM head

FLOPs (multiply-add = 2):
    per layer, on n query rows:  q/k/v  2 * rows * d * (d + 2 * kv)      (kv = Hkv * hd)
                                 attention  4 * n * keys * H * hd         (QK^T and PV)
                                 output  2 * n * d * d,  SwiGLU FFN  2 * n * 3 * d * F
    n = rows in layers 0 .. n_layers-2 and n = last_rows in the last one; then the LM head
    2 * head_rows * d * E (E = embedding_size).  Everything times B.
Bytes (the least traffic a step needs; element size `elt`):
    weights read once (every layer, final norm, LM head; the embedding rows looked up),
    per layer the K and V of the keys read once (2 * keys * kv), and activations written
    once and read once: per row fed its normed input and q/k/v (2 d + 2 kv), per query row
    the attention output, residual, FFN norm and FFN output (4 d), gate/up (2 F), SwiGLU (F);
    the logits of the head rows written and read once (2 * head_rows * E); KV-cache
    modes also write the cache (2 * keys * kv per layer) when they fill it. Quantized block
    matrices count their stored bytes (MATRIX_BYTES); FLOPs are counted the same in any format.
Attention scores stay on chip (flash-style), so they count no bytes.

Per step of each mode (P prompt, G answer, blocks of b rows at lo = P, P + b, ...):
    exact      rows = keys = L, last_rows = head_rows = b
    reference  rows = keys = last_rows = head_rows = L (full-sequence logits)
    prefix     block's first step: exact + cache write; then rows = L - lo, keys = L
    dual       block's first step: exact + cache write; then rows = b, keys = L
step_cost averages the cache modes over a whole generation of s steps per block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

MODES = ("exact", "reference", "prefix", "dual")


@dataclass(frozen=True)
class StepCost:
    flops: float   # floating-point operations (multiply-add = 2)
    bytes: float   # least device-memory traffic

    def __add__(self, other: "StepCost") -> "StepCost":
        return StepCost(self.flops + other.flops, self.bytes + other.bytes)

    def scale(self, k: float) -> "StepCost":
        return StepCost(self.flops * k, self.bytes * k)


# bytes per element of a quantized block matrix, scales included (int4: groups of 128 inputs, a
# float32 scale and zero point each)
MATRIX_BYTES = {"int8": 1.0, "fp8": 1.0, "int4": 0.5 + 8 / 128}


def weight_bytes(cfg, elt: float, matrix_elt: Optional[float] = None) -> float:
    """Every weight read once: layers, final norm and LM head (the embedding table is only gathered).
    matrix_elt: bytes per element of the block matrices when they are quantized (default elt)."""
    d, f, kv = cfg.d_model, cfg.mlp_hidden_size, cfg.n_kv_heads * cfg.head_dim
    matrices = d * (d + 2 * kv) + d * d + 3 * d * f
    per_layer = (elt if matrix_elt is None else matrix_elt) * matrices + elt * 2 * d
    return cfg.n_layers * per_layer + elt * (d + cfg.embedding_size * d)


def forward_cost(cfg, batch: int, rows: int, keys: int, last_rows: int, head_rows: int, elt: int,
                 cache_write: bool = False, matrix_elt: Optional[float] = None) -> StepCost:
    """FLOPs and bytes of one forward (see the module docstring for the row counts)."""
    d, f, H, hd = cfg.d_model, cfg.mlp_hidden_size, cfg.n_heads, cfg.head_dim
    kv, E, n = cfg.n_kv_heads * hd, cfg.embedding_size, cfg.n_layers

    def layer_flops(q_rows: int) -> float:
        return (2 * rows * d * (d + 2 * kv) + 4 * q_rows * keys * H * hd
                + 2 * q_rows * d * d + 2 * q_rows * 3 * d * f)

    def layer_bytes(q_rows: int) -> float:
        act = 2 * (rows * (2 * d + 2 * kv) + q_rows * (4 * d + 3 * f))   # written once, read once
        kv_io = 2 * keys * kv * (2 if cache_write else 1)            # K, V read (and written)
        return elt * (act + kv_io)

    flops = (n - 1) * layer_flops(rows) + layer_flops(last_rows) + 2 * head_rows * d * E
    act_bytes = (n - 1) * layer_bytes(rows) + layer_bytes(last_rows)
    io_bytes = elt * (rows * d + 2 * head_rows * E)                  # embedding rows, logits
    return StepCost(batch * flops, weight_bytes(cfg, elt, matrix_elt) + batch * (act_bytes + io_bytes))


def step_cost(cfg, batch: int, prompt_len: int, gen_length: int, block_length: int, mode: str,
              steps_per_block: float, elt: int, quant: Optional[str] = None) -> StepCost:
    """Mean cost of one denoising step of `mode` over a generation with steps_per_block steps a block
    (may be fractional: a threshold run's forwards / blocks); quant: the block matrices' format."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    L, b = prompt_len + gen_length, block_length
    q = MATRIX_BYTES[quant] if quant else None
    if mode == "reference":
        return forward_cost(cfg, batch, L, L, L, L, elt, matrix_elt=q)
    if mode == "exact":
        return forward_cost(cfg, batch, L, L, b, b, elt, matrix_elt=q)
    total = StepCost(0.0, 0.0)
    starts = range(prompt_len, L, b)
    for lo in starts:
        rows = L - lo if mode == "prefix" else b
        total = total + forward_cost(cfg, batch, L, L, b, b, elt, cache_write=True, matrix_elt=q)
        total = total + forward_cost(cfg, batch, rows, L, b, b, elt, matrix_elt=q).scale(max(steps_per_block - 1, 0.0))
    return total.scale(1.0 / (len(starts) * max(steps_per_block, 1.0)))
