"""Every broken generation rule raises ValueError (or NotImplementedError) naming the rule."""
import pytest
import torch

KW = dict(steps=8, gen_length=16, block_length=8)


@pytest.fixture(scope="module")
def eng(engines, kernel_impl):
    return engines["llada"][0]


@pytest.mark.parametrize("args,rule", [
    (dict(gen_length=12, block_length=8), "not divisible by block_length"),
    (dict(steps=3, gen_length=16, block_length=8), "not divisible by the number of blocks"),
    (dict(steps=0), "steps must be a positive integer"),
    (dict(gen_length=-8), "gen_length must be a positive integer"),
    (dict(block_length=0), "block_length must be a positive integer"),
    (dict(gen_length=512, block_length=8, steps=64), "exceeds max_sequence_length"),
    (dict(temperature=-1.0), "temperature"),
    (dict(cfg_scale=-0.5), "cfg_scale"),
    (dict(remasking="entropy"), "remasking"),
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=1.5), "threshold"),
    (dict(seed=-1), "seed"),
    (dict(stop_token_ids=[10**6]), "stop_token_ids"),
])
def test_bad_generation_arguments(eng, args, rule):
    with pytest.raises(ValueError, match=rule):
        eng.generate([[1, 2, 3]], **{**KW, **args})


def test_mask_inside_prompt(eng):
    with pytest.raises(ValueError, match="mask token id .* inside the prompt"):
        eng.generate([[1, eng.cfg.mask_token_id, 3]], **KW)


@pytest.mark.parametrize("ids,rule", [
    ([[]], "prompt is empty"),
    (torch.zeros(2, 3, 4, dtype=torch.long), r"shape \[batch, length\]"),
    (torch.ones(1, 3), "integer token ids"),
    ([[1, 2], [3]], "equal-length"),
    ([[1, 10**6]], r"must lie in \[0,"),
    ([[-1, 2]], r"must lie in \[0,"),
])
def test_bad_prompt(eng, ids, rule):
    with pytest.raises(ValueError, match=rule):
        eng.generate(ids, **KW)


@pytest.mark.parametrize("mask,rule", [
    ([[1, 0, 1]], "not left padding"),
    ([[1, 1]], "differs from input_ids shape"),
    ([[0, 0, 0]], "no real token"),
    ([[0, 2, 1]], "only 0 and 1"),
    (torch.ones(1, 3), "integer or bool"),
])
def test_bad_attention_mask(eng, mask, rule):
    with pytest.raises(ValueError, match=rule):
        eng.generate([[1, 2, 3]], attention_mask=mask, **KW)


@pytest.mark.parametrize("args,rule", [
    (dict(cache="window"), "cache must be None or one of"),
    (dict(cache="dual", cfg_scale=1.0), "does not support classifier-free guidance"),
])
def test_bad_cache_arguments(eng, args, rule):
    with pytest.raises(ValueError, match=rule):
        eng.generate([[1, 2, 3]], **{**KW, **args})


def test_stop_at_eos_needs_an_eos(tmp_path):
    from checkpoints import write_checkpoint
    from illada_rt import Engine
    write_checkpoint(str(tmp_path), "llada", eos_token_id=None)
    with pytest.raises(ValueError, match="stop_at_eos needs"):
        Engine.from_pretrained(str(tmp_path)).generate([[1, 2]], stop_at_eos=True, **KW)


def test_logits_too_long(eng):
    with pytest.raises(ValueError, match="max_sequence_length"):
        eng.logits(torch.ones(1, eng.cfg.max_sequence_length + 1, dtype=torch.long))
