"""Block KV caches (cache="prefix" / "dual") against the Fast-dLLM-style reference, token for token."""
import os

import pytest
import torch

from prompts import padded_prompt, random_prompt
from illada_rt import DEMO_MODEL_DIR, Engine, reference
from illada_rt.decoding.kv_cache import BlockKVCache

MODES = ["prefix", "dual"]
OPTIONS = [dict(), dict(threshold=0.5), dict(threshold=0.9), dict(temperature=0.8, remasking="random"),
           dict(temperature=1.0, seed=3)]


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("padded", [False, True])
def test_matches_reference(engines, layout, mode, options, padded):
    eng, ref = engines[layout]
    ids, mask = padded_prompt(eng.cfg) if padded else (random_prompt(eng.cfg, 2, 6, seed=4), None)
    kw = {"steps": 8, "gen_length": 16, "block_length": 8, "seed": 0, **options}
    out = eng.generate(ids, mask, cache=mode, **kw)
    expected, nfe = reference.generate_with_cache(ref, ids, mask, mode=mode, mask_id=eng.cfg.mask_token_id, **kw)
    assert torch.equal(out.sequences, expected)
    assert out.nfe == nfe
    assert not bool((out.answers == eng.cfg.mask_token_id).any())


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("steps,gen_length,block_length", [(16, 16, 4), (12, 24, 8), (6, 12, 12), (10, 10, 5)])
def test_matches_reference_grid(engines, layout, mode, steps, gen_length, block_length):
    eng, ref = engines[layout]
    ids = random_prompt(eng.cfg, 2, 5 + steps % 7, seed=steps + gen_length)
    kw = dict(steps=steps, gen_length=gen_length, block_length=block_length, seed=1)
    out = eng.generate(ids, cache=mode, **kw)
    expected, nfe = reference.generate_with_cache(ref, ids, mode=mode, mask_id=eng.cfg.mask_token_id, **kw)
    assert torch.equal(out.sequences, expected) and out.nfe == nfe == steps


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("mode", MODES)
def test_one_step_per_block_is_exact(engines, layout, mode):
    """With one step per block every step is a cache-filling full forward: the exact mode."""
    eng = engines[layout][0]
    ids, mask = padded_prompt(eng.cfg)
    kw = dict(steps=4, gen_length=16, block_length=4, seed=0)
    assert torch.equal(eng.generate(ids, mask, cache=mode, **kw).sequences, eng.generate(ids, mask, **kw).sequences)


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("mode", MODES)
def test_block_step_on_a_fresh_cache_equals_full_forward(engines, layout, mode):
    """Recomputing rows against a cache filled from the same canvas gives the exact logits."""
    eng = engines[layout][0]
    ids, mask = padded_prompt(eng.cfg, length=9)
    canvas = torch.cat([ids, torch.full((3, 12), eng.cfg.mask_token_id)], 1)
    canvas[:, 12] = 7                                       # an already unmasked token inside the block
    key_mask = torch.cat([mask.bool(), torch.ones(3, 12, dtype=torch.bool)], 1)
    lo, hi = 11, 17
    cache = BlockKVCache(eng.model, mode)
    first = cache.block_logits(canvas, key_mask, lo, hi, 0)
    exact = eng.model.logits(canvas, key_mask, slice(lo, hi))
    torch.testing.assert_close(first, exact, rtol=0, atol=0)
    again = cache.block_logits(canvas, key_mask, lo, hi, 1)
    torch.testing.assert_close(again, exact, rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("threshold", [None, 0.3])
def test_nfe_counts_forwards(engines, monkeypatch, mode, threshold):
    eng = engines["illada"][0]
    calls = []

    def counted(name, method):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return method(*args, **kwargs)
        return wrapper

    for name in ("prefill", "block_step", "logits"):
        monkeypatch.setattr(eng.model, name, counted(name, getattr(eng.model, name)))
    out = eng.generate(random_prompt(eng.cfg, 2, 5, seed=2), steps=16, gen_length=16, block_length=8,
                       threshold=threshold, cache=mode)
    # prefill and block_step each run logits once
    forwards = calls.count("prefill") + calls.count("block_step")
    assert out.nfe == forwards == calls.count("logits")
    assert calls.count("prefill") == 2                       # one per block
    if threshold is None:
        assert out.nfe == 16


def agreement(eng, ids, mask, mode, gen_length=32, block_length=8):
    """Caches approximate the exact mode; measured, not asserted equal:
    - tokens: share of answer tokens equal to the exact mode's (greedy generation);
    - per_step: top-1 agreement of cached-step logits with the exact logits on the same
      canvas (greedy, leftmost mask unmasked per step), the approximation without the
      cascade that one different token causes."""
    cfg, model = eng.cfg, eng.model
    kw = dict(steps=gen_length, gen_length=gen_length, block_length=block_length, seed=0)
    tokens = (eng.generate(ids, mask, cache=mode, **kw).answers == eng.generate(ids, mask, **kw).answers)
    B, P = ids.shape
    canvas = torch.cat([ids, torch.full((B, gen_length), cfg.mask_token_id)], 1)
    key_mask = None if mask is None else torch.cat([mask.bool(), torch.ones(B, gen_length, dtype=torch.bool)], 1)
    cache, hits, total = BlockKVCache(model, mode), 0, 0
    for lo in range(P, P + gen_length, block_length):
        rows = slice(lo, lo + block_length)
        for i in range(block_length):
            got = cache.block_logits(canvas, key_mask, lo, rows.stop, i)[..., : cfg.vocab_size].argmax(-1)
            want = model.logits(canvas, key_mask, rows)[..., : cfg.vocab_size].argmax(-1)
            masked = canvas[:, rows] == cfg.mask_token_id
            if i > 0:
                hits, total = hits + int(((got == want) & masked).sum()), total + int(masked.sum())
            first = masked.to(torch.int8).argmax(1)
            canvas[torch.arange(B), lo + first] = want[torch.arange(B), first]
    return float(tokens.float().mean()), hits / total


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("mode", MODES)
def test_agreement_with_exact_mode(engines, layout, mode):
    """Random tiny models are chaotic (one different token changes the rest), so the token
    share is low; the bounds are far above chance (1/vocab)."""
    eng = engines[layout][0]
    tokens, per_step = agreement(eng, random_prompt(eng.cfg, 8, 12, seed=5), None, mode)
    print(f"\n{layout} cache={mode}: answer tokens equal to exact {tokens:.2f}, per-step top-1 {per_step:.3f}")
    assert tokens > 0.1 and per_step > 0.5


@pytest.mark.parametrize("mode", MODES)
def test_agreement_on_the_trained_demo_model(mode):
    if not os.path.isfile(os.path.join(DEMO_MODEL_DIR, "model.safetensors")):
        pytest.skip("the demo model's weights are not in this tree")
    eng = Engine.from_pretrained(DEMO_MODEL_DIR)
    ids, mask = eng.encode_prompts(["ROMEO:\n", "KING HENRY:\nWhat say you", "To be, or not"])
    tokens, per_step = agreement(eng, ids, mask, mode)
    print(f"\ndemo model cache={mode}: answer tokens equal to exact {tokens:.2f}, per-step top-1 {per_step:.3f}")
    assert tokens > 0.3 and per_step > 0.85


@pytest.mark.parametrize("mode", MODES)
def test_early_stop_with_cache(engines, mode):
    eng = engines["llada"][0]
    ids = random_prompt(eng.cfg, 1, 5, seed=13)
    kw = dict(steps=16, gen_length=32, block_length=8, seed=0, cache=mode)
    full = eng.generate(ids, **kw)
    stop = int(full.answers[0, 3])
    out = eng.generate(ids, stop_at_eos=True, stop_token_ids=[stop], **kw)
    first = int((full.answers[0] == stop).nonzero()[0])
    assert int(out.answer_lengths[0]) == first
    assert torch.equal(out.answers[0, : first + 1], full.answers[0, : first + 1])
    assert out.nfe < full.nfe


@pytest.mark.parametrize("mode", MODES)
def test_low_precision_cache_runs(checkpoint, mode):
    eng = Engine.from_pretrained(checkpoint[1], dtype="bfloat16")
    out = eng.generate(random_prompt(eng.cfg, 2, 5, seed=1), steps=8, gen_length=16, block_length=8, cache=mode)
    assert not bool((out.answers == eng.cfg.mask_token_id).any()) and out.nfe == 8
