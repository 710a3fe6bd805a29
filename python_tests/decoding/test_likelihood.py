"""Engine.log_likelihood / score_choices against the plain reference (same generator, same numbers)."""
import pytest
import torch

from prompts import random_prompt
from illada_rt.reference import tasks as reference_tasks


def pair(cfg, prompt_len, answer_len, seed):
    ids = random_prompt(cfg, 1, prompt_len + answer_len, seed=seed)[0].tolist()
    return ids[:prompt_len], ids[prompt_len:]


def reference_ll(engines, layout, prompt, answer, seed, **kw):
    eng, ref = engines[layout]
    g = torch.Generator().manual_seed(seed)
    return reference_tasks.log_likelihood(ref, prompt, answer, mask_id=eng.cfg.mask_token_id, generator=g, **kw)


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("mc_num,batch_size", [(8, 4), (4, 4), (6, 2), (1, 1), (9, 3)])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_matches_reference(engines, layout, mc_num, batch_size, cfg_scale):
    eng = engines[layout][0]
    prompt, answer = pair(eng.cfg, 7, 11, seed=mc_num)
    got = eng.log_likelihood(prompt, answer, mc_num=mc_num, batch_size=batch_size, cfg_scale=cfg_scale, seed=4)
    want = reference_ll(engines, layout, prompt, answer, 4, mc_num=mc_num, batch_size=batch_size, cfg_scale=cfg_scale)
    assert isinstance(got, float) and got < 0
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("layout", ["llada", "illada"])
def test_many_pairs_at_once(engines, layout):
    """Pairs of different lengths in one call; pair j uses seed + j, whatever else is in the call."""
    eng = engines[layout][0]
    pairs = [pair(eng.cfg, 3, 5, 1), pair(eng.cfg, 9, 2, 2), pair(eng.cfg, 0, 13, 3), pair(eng.cfg, 5, 1, 4)]
    prompts, answers = [p for p, _ in pairs], [torch.tensor(a) for _, a in pairs]
    got = eng.log_likelihood(prompts, answers, mc_num=8, batch_size=4, seed=10)
    assert got.shape == (4,) and got.dtype == torch.float64
    for j, (p, a) in enumerate(pairs):
        assert float(got[j]) == pytest.approx(reference_ll(engines, layout, p, a, 10 + j, mc_num=8, batch_size=4),
                                              rel=1e-5)
    assert float(got[1]) == eng.log_likelihood(prompts[1], answers[1].tolist(), mc_num=8, batch_size=4, seed=11)


def test_seeded_and_seed_dependent(engines):
    eng = engines["llada"][0]
    prompt, answer = pair(eng.cfg, 5, 9, seed=0)
    kw = dict(mc_num=4, batch_size=2)
    a = eng.log_likelihood(prompt, answer, seed=1, **kw)
    assert a == eng.log_likelihood(prompt, answer, seed=1, **kw)
    assert a != eng.log_likelihood(prompt, answer, seed=2, **kw)


@pytest.mark.parametrize("layout", ["llada", "illada"])
def test_score_choices_matches_reference(engines, layout):
    eng, ref = engines[layout]
    prompt, _ = pair(eng.cfg, 8, 0, seed=5)
    options = [pair(eng.cfg, 0, n, seed=n)[1] for n in (3, 1, 6, 3)]
    got = eng.score_choices(prompt, options)
    want = [reference_tasks.score_choice(ref, prompt, o, mask_id=eng.cfg.mask_token_id) for o in options]
    assert got.shape == (4,) and got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-4)


def test_one_token_answer_needs_no_sampling(engines):
    """With a single answer token every sample masks it: the estimate is log p(token | prompt)."""
    eng = engines["illada"][0]
    prompt, answer = pair(eng.cfg, 6, 1, seed=8)
    ll = eng.log_likelihood(prompt, answer, mc_num=4, batch_size=2)
    assert ll == pytest.approx(float(eng.score_choices(prompt, [answer])[0]), rel=1e-5)


@pytest.mark.parametrize("call,rule", [
    (lambda e, m: e.log_likelihood([1, 2], [], mc_num=4, batch_size=2), "answers\\[0\\] is empty"),
    (lambda e, m: e.log_likelihood([1, 2], [3], mc_num=6, batch_size=4), "not a multiple of batch_size"),
    (lambda e, m: e.log_likelihood([1, 2], [3], mc_num=0, batch_size=4), "mc_num must be a positive integer"),
    (lambda e, m: e.log_likelihood([1, 2], [3, m], mc_num=4, batch_size=2), "mask id"),
    (lambda e, m: e.log_likelihood([[1, 2]], [[3], [4]], mc_num=4, batch_size=2), "1 prompts and 2 answers"),
    (lambda e, m: e.log_likelihood([1, 2], [[3]], mc_num=4, batch_size=2), "both be one token sequence"),
    (lambda e, m: e.log_likelihood([1, 2], [3], cfg_scale=-1.0, mc_num=4, batch_size=2), "cfg_scale"),
    (lambda e, m: e.log_likelihood([1] * 500, [3] * 20, mc_num=4, batch_size=2), "max_sequence_length"),
    (lambda e, m: e.score_choices([1, 2], []), "non-empty list"),
    (lambda e, m: e.score_choices([1, 2], [[3], []]), "options\\[1\\] is empty"),
])
def test_bad_arguments(engines, call, rule):
    eng = engines["llada"][0]
    with pytest.raises(ValueError, match=rule):
        call(eng, eng.cfg.mask_token_id)
