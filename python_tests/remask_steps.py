"""Random inputs of one remask step (tokens, logits, seeds, steps) on the CPU, from seeded generators:
shared by the CPU remask tests (ops/test_remask.py) and the CUDA ones (ops/test_cuda_remask.py)."""
import zlib

import torch


def generator(*case):
    return torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))


def make_step(g, *, B, Lb, vocab, pad_cols=0, block_start=4, tail=5, mask_id=None, dtype=torch.float32,
              masked_frac=0.7, logit_scale=3.0):
    """Random inputs of one step.

    tokens [B, block_start + Lb + tail]: random before the block (mask ids included: not in the
    block, never touched), a block with ~masked_frac of its rows masked, a fully masked tail.
    logits [B, Lb, vocab + pad_cols] in dtype: padded columns hold a huge value (never chosen).
    """
    mask_id = vocab - 3 if mask_id is None else mask_id
    T = block_start + Lb + tail
    tokens = torch.randint(0, vocab, (B, T), generator=g)
    tokens[:, block_start:][tokens[:, block_start:] == mask_id] = (mask_id + 1) % vocab
    tokens[:, :block_start][torch.rand(B, block_start, generator=g) < 0.3] = mask_id
    block = tokens[:, block_start: block_start + Lb]
    block[torch.rand(B, Lb, generator=g) < masked_frac] = mask_id
    tokens[:, block_start + Lb:] = mask_id
    logits = torch.randn(B, Lb, vocab + pad_cols, generator=g) * logit_scale
    logits[..., vocab:] = 1e4
    return dict(tokens=tokens, block_start=block_start, vocab=vocab, mask_id=mask_id,
                logits=logits.to(dtype), seeds=torch.randint(0, 2**40, (B,), generator=g),
                row_offset=torch.zeros(B, dtype=torch.int64), step=torch.randint(0, 50, (B,), generator=g))
