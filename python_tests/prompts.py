"""Prompts on the CPU for the tests: random token ids that avoid the mask id, left-padded batches, and
batches of requests of varied prompt, answer and block lengths."""
import torch


def random_prompt(cfg, batch, length, seed):
    """Prompt tokens avoiding the mask id."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=g)
    return torch.where(ids == cfg.mask_token_id, (ids + 1) % cfg.vocab_size, ids)


def padded_prompt(cfg, batch=3, length=7, seed=9):
    """(ids, attention_mask): rows 0 and -1 left-padded."""
    ids = random_prompt(cfg, batch, length, seed=seed)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[-1, :1] = 0
    return ids.masked_fill(mask == 0, cfg.pad_token_id), mask


def varied_requests(cfg, n, seed, **fixed):
    """n (prompt [P], options) pairs of varied prompt, answer and block lengths and seeds."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(2, 13, (1,), generator=g))
        block = [4, 8, 5][i % 3]
        gen = block * (1 + i % 3)
        blocks = gen // block
        steps = [gen, blocks * max(1, block // 2), blocks][i % 3]
        ids = random_prompt(cfg, 1, length, seed=seed * 100 + i)[0]
        out.append((ids, dict(gen_length=gen, block_length=block, steps=steps, seed=seed + i, **fixed)))
    return out
