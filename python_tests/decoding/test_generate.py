"""Engine.generate against the reference generator, token for token (float32, CPU)."""
import pytest
import torch

from prompts import random_prompt
from illada_rt import reference

GRID = [  # (steps, gen_length, block_length)
    (8, 8, 8), (16, 16, 4), (8, 16, 4), (12, 24, 8), (6, 12, 12), (32, 16, 8), (10, 10, 5),
    # steps that do not divide a block's masks: per-step counts 3, 3, 2 and 2, 2, 2, 1, 1, so
    # the schedule's order (the larger counts first) shows in the tokens
    (6, 16, 8), (10, 16, 8),
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
@pytest.mark.parametrize("stopping", ["every_row", "first_row"])
def test_early_stop_matches_reference_and_saves_blocks(engines, layout, stopping):
    """Early stop: once a finished block holds a stop token, the row's answer after it becomes EOS.
    Stop ids are drawn from a run without early stop, so where they fall is known: "every_row":
    each row meets one in block 0, so blocks 1-3 are skipped and only block 0's 4 forwards run;
    "first_row": row 1 meets none in block 0 and goes on (row 0 does not stop the batch)."""
    eng, ref = engines[layout]
    ids = random_prompt(eng.cfg, 2, 5, seed=13)
    kw = dict(steps=16, gen_length=32, block_length=8, seed=0)  # 4 blocks of 8, 4 steps a block
    full = eng.generate(ids, **kw)
    block0 = full.answers[:, :8]
    if stopping == "every_row":
        stops = [int(block0[0, 3]), int(block0[1, 5])]
    else:
        stops = [t for t in block0[0].tolist() if t not in block0[1].tolist()][:1]
        assert stops, "row 0's first block shares every token with row 1's"
    stop_ids = torch.tensor(stops)
    assert torch.isin(block0, stop_ids).any(1).tolist() == [True, stopping == "every_row"]  # the premise

    out = eng.generate(ids, stop_at_eos=True, stop_token_ids=stops, **kw)
    expected, nfe = reference.generate(ref, ids, mask_id=eng.cfg.mask_token_id, stop_token_ids=stops,
                                       fill_id=eng.cfg.eos_token_id, **kw)
    assert torch.equal(out.sequences, expected) and out.nfe == nfe
    for b in range(2):
        hits = torch.isin(full.answers[b], stop_ids).nonzero()
        first = int(hits[0]) if len(hits) else full.answers.shape[1]
        assert int(out.answer_lengths[b]) == first
        assert torch.equal(out.answers[b, : first + 1], full.answers[b, : first + 1])
        assert bool((out.answers[b, first + 1:] == eng.cfg.eos_token_id).all())
    assert full.nfe == 16
    if stopping == "every_row":
        assert out.nfe == 4       # every row stopped in block 0: blocks 1-3 took no forward
    else:
        assert out.nfe > 4        # row 1 went on


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
