"""Counter-based random numbers (Philox4x32-10), written in plain torch.

The compiled remask kernels draw the same numbers from the same counters, so a
seeded generation is reproducible across CPU, CUDA, batch composition and
padding. Counters identify *what* the number is for, never *when* it was drawn:

    key     = (seed & 0xffffffff, seed >> 32)            per sequence
    counter = (c0, position, step, stream)
      stream GUMBEL: c0 = vocab_index // 4, word = vocab_index % 4
      stream RANDOM_REMASK: c0 = 0, word 0
    position = index of the token among the sequence's own tokens (left padding excluded)
    step     = index of the denoising step (forward pass) within the generation

uniform(x) = (x + 0.5) / 2**32, in float64, strictly inside (0, 1).
"""
from __future__ import annotations

import torch

GUMBEL = 0
RANDOM_REMASK = 1

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_U32 = 0xFFFFFFFF


def _mulhilo(a: int, b: torch.Tensor):
    # b < 2**32 in int64; the 64-bit product may wrap, which keeps the low 64 bits exact.
    p = b * a
    return (p >> 32) & _U32, p & _U32


def _on(t, device) -> torch.Tensor:
    """An int64 tensor of t on `device`; a Python int becomes a 0-dim fill there, with no host-to-device
    copy (a copy would break CUDA-graph capture of the step)."""
    if isinstance(t, torch.Tensor):
        return t.to(torch.int64)
    return torch.full((), int(t), dtype=torch.int64, device=device)


def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on broadcastable int64 tensors (or ints) holding uint32 values, computed on
    the device of the tensors among them."""
    device = next((t.device for t in (c0, c1, c2, c3, k0, k1) if isinstance(t, torch.Tensor)), None)
    c0, c1, c2, c3, k0, k1 = torch.broadcast_tensors(*(_on(t, device) for t in (c0, c1, c2, c3, k0, k1)))
    c0, c1, c2, c3 = (t & _U32 for t in (c0, c1, c2, c3))
    k0, k1 = k0 & _U32, k1 & _U32
    for r in range(10):
        if r:
            k0 = (k0 + _W0) & _U32
            k1 = (k1 + _W1) & _U32
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uniform(words: torch.Tensor) -> torch.Tensor:
    return (words.to(torch.float64) + 0.5) * (2.0 ** -32)


def seed_key(seeds: torch.Tensor):
    seeds = seeds.to(torch.int64)
    return seeds & _U32, (seeds >> 32) & _U32


def gumbel_uniforms(seeds, positions, step, vocab: int, vocab_start: int = 0) -> torch.Tensor:
    """u[b, i, v] for seeds [B], positions [B, L], step [B] and the vocabulary entries
    [vocab_start, vocab_start + vocab) -> float64 [B, L, vocab] on seeds' device.

    Vocabulary entry v takes word v % 4 of the counter c0 = v // 4: one Philox call serves four entries.
    """
    first = vocab_start // 4
    quads = torch.arange(first, (vocab_start + vocab + 3) // 4, dtype=torch.int64, device=seeds.device)  # c0 values
    k0, k1 = seed_key(seeds)
    words = philox4x32(quads[None, None, :], positions[:, :, None], step[:, None, None], GUMBEL,
                       k0[:, None, None], k1[:, None, None])
    word = torch.stack(words, dim=-1).flatten(-2)                  # [B, L, 4 * quads]: entries from 4 * first
    skip = vocab_start - 4 * first
    return uniform(word[..., skip:skip + vocab])


def remask_uniforms(seeds, positions, step) -> torch.Tensor:
    """u[b, i] for random remasking: seeds [B], positions [B, L], step [B] -> float64 [B, L]."""
    k0, k1 = seed_key(seeds)
    w0, _, _, _ = philox4x32(0, positions, step[:, None], RANDOM_REMASK, k0[:, None], k1[:, None])
    return uniform(w0)
