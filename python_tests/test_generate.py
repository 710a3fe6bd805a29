"""Engine.generate against the reference generator, token for token (float32, CPU)."""
import pytest
import torch

from conftest import random_prompt
from illada_rt import reference

GRID = [  # (steps, gen_length, block_length)
    (8, 8, 8), (16, 16, 4), (8, 16, 4), (12, 24, 8), (6, 12, 12), (32, 16, 8), (10, 10, 5),
]


def run_both(engines, layout, ids, mask=None, **kw):
    eng, ref = engines[layout]
    out = eng.generate(ids, attention_mask=mask, **kw)
    expected, nfe = reference.generate(ref, ids, mask, mask_id=eng.cfg.mask_token_id, **kw)
    return out, expected, nfe


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("steps,gen_length,block_length", GRID)
def test_matches_reference_grid(engines, layout, steps, gen_length, block_length):
    cfg = engines[layout][0].cfg
    ids = random_prompt(cfg, 2, 5 + steps % 7, seed=steps * 100 + gen_length)
    out, expected, nfe = run_both(engines, layout, ids, steps=steps, gen_length=gen_length,
                                  block_length=block_length, seed=0)
    assert torch.equal(out.sequences, expected)
    assert out.nfe == nfe
    assert out.sequences.shape == (2, ids.shape[1] + gen_length)
    assert not bool((out.answers == cfg.mask_token_id).any())


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("options", [
    dict(cfg_scale=1.0), dict(cfg_scale=0.5, temperature=0.7), dict(temperature=1.0),
    dict(remasking="random"), dict(remasking="random", temperature=0.5),
    dict(threshold=0.9), dict(threshold=0.3), dict(threshold=0.5, cfg_scale=1.0), dict(threshold=1.0),
])
def test_matches_reference_options(engines, layout, options):
    cfg = engines[layout][0].cfg
    ids = random_prompt(cfg, 3, 6, seed=7)
    out, expected, nfe = run_both(engines, layout, ids, steps=8, gen_length=16, block_length=8, seed=11, **options)
    assert torch.equal(out.sequences, expected)
    assert out.nfe == nfe


def test_threshold_one_transfers_one_token_per_step(engines):
    ids = random_prompt(engines["llada"][0].cfg, 1, 4, seed=1)
    out = engines["llada"][0].generate(ids, steps=4, gen_length=16, block_length=8, threshold=1.0)
    assert out.nfe == 16


def test_low_threshold_uses_fewer_forwards(engines):
    ids = random_prompt(engines["llada"][0].cfg, 1, 4, seed=1)
    out = engines["llada"][0].generate(ids, steps=16, gen_length=16, block_length=8, threshold=0.05)
    assert 2 <= out.nfe < 16


@pytest.mark.parametrize("layout", ["llada", "illada"])
def test_seeded_sampling_is_deterministic_and_seed_dependent(engines, layout):
    eng = engines[layout][0]
    ids = random_prompt(eng.cfg, 2, 5, seed=3)
    kw = dict(steps=8, gen_length=16, block_length=8, temperature=1.0, remasking="random")
    a = eng.generate(ids, seed=5, **kw).sequences
    assert torch.equal(a, eng.generate(ids, seed=5, **kw).sequences)
    assert not torch.equal(a, eng.generate(ids, seed=6, **kw).sequences)


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("options", [dict(), dict(cfg_scale=1.0), dict(temperature=0.8, seed=4), dict(threshold=0.6)])
def test_left_padded_batch_matches_reference(engines, layout, options):
    eng = engines[layout][0]
    ids = random_prompt(eng.cfg, 3, 7, seed=9)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[2, :1] = 0
    ids = ids.masked_fill(mask == 0, eng.cfg.pad_token_id)
    options = {"seed": 0, **options}
    out, expected, nfe = run_both(engines, layout, ids, mask, steps=8, gen_length=16, block_length=8, **options)
    assert torch.equal(out.sequences, expected)


@pytest.mark.parametrize("layout", ["llada", "illada"])
def test_early_stop_matches_reference_and_saves_blocks(engines, layout):
    eng, ref = engines[layout]
    ids = random_prompt(eng.cfg, 2, 5, seed=13)
    kw = dict(steps=16, gen_length=32, block_length=8, seed=0)
    full = eng.generate(ids, **kw)
    stop = int(full.answers[0, 3])  # a token row 0 produces in its first block
    out = eng.generate(ids, stop_at_eos=True, stop_token_ids=[stop], **kw)
    expected, nfe = reference.generate(ref, ids, mask_id=eng.cfg.mask_token_id, stop_token_ids=[stop],
                                       fill_id=eng.cfg.eos_token_id, **kw)
    assert torch.equal(out.sequences, expected) and out.nfe == nfe
    first = int((full.answers[0] == stop).nonzero()[0])
    assert int(out.answer_lengths[0]) == first
    assert torch.equal(out.answers[0, : first + 1], full.answers[0, : first + 1])
    assert bool((out.answers[0, first + 1:] == eng.cfg.eos_token_id).all())
    if bool((full.answers[1, :8] == stop).any()):
        assert out.nfe < full.nfe  # every row stopped in block 0: later blocks skipped


def test_answer_lengths_without_eos_is_full_length(engines):
    eng = engines["llada"][0]
    ids = random_prompt(eng.cfg, 1, 3, seed=1)
    out = eng.generate(ids, steps=8, gen_length=8, block_length=8, stop_token_ids=[eng.cfg.mask_token_id - 1])
    hits = (out.answers[0] == eng.cfg.mask_token_id - 1).nonzero()
    assert int(out.answer_lengths[0]) == (int(hits[0]) if len(hits) else 8)


def test_list_input_and_1d_prompt(engines):
    eng = engines["llada"][0]
    ids = random_prompt(eng.cfg, 1, 4, seed=0)
    kw = dict(steps=8, gen_length=8, block_length=8)
    a = eng.generate(ids, **kw).sequences
    assert torch.equal(a, eng.generate(ids[0].tolist(), **kw).sequences)
    assert torch.equal(a, eng.generate(ids[0], **kw).sequences)
