"""Hostile arguments to the engine and the shared engine: a request's cost follows what it runs, an
empty answer is an answer, and a wrongly typed argument is a ValueError naming it."""
import pytest
import torch

from checkpoints import write_text_checkpoint
from prompts import random_prompt
from illada_rt import Engine, SyncEngine, reference
from illada_rt.decoding.graph.state import StepState
from illada_rt.decoding.loop import StepBuffers

# Before: schedules were [steps, B] (StepBuffers.k, the graph step's k_table, a serving row's list):
# 2**40 steps asked for 8 TiB at once. A block of n masks runs at most n steps whatever `steps` says.
HUGE = 2 ** 40
KW = dict(gen_length=16, block_length=8)


@pytest.fixture(scope="module")
def eng(engines, kernel_impl):
    return engines["llada"][0]


@pytest.mark.parametrize("options", [dict(), dict(temperature=0.9, remasking="random"), dict(cfg_scale=0.5),
                                     dict(threshold=0.3), dict(cache="prefix"), dict(cache="dual"),
                                     dict(stop_at_eos=True)],
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "greedy")
def test_steps_beyond_the_masks_change_nothing_and_cost_nothing(eng, options):
    ids = random_prompt(eng.cfg, 2, 5, seed=3)
    want = eng.generate(ids, **KW, steps=16, seed=4, **options)     # 8 steps a block of 8: one token a step
    for steps in (2 * 12, 2 * HUGE):                                  # 12 a block, and absurdly many
        got = eng.generate(ids, **KW, steps=steps, seed=4, **options)
        assert torch.equal(got.sequences, want.sequences) and got.nfe == want.nfe, steps


def test_steps_beyond_the_masks_match_the_reference(engines):
    """LLaDA's schedule with more steps than masks (zero-transfer steps), computed by the reference."""
    eng, ref = engines["illada"]
    ids = random_prompt(eng.cfg, 2, 4, seed=9)
    for steps in (2 * 11, 2 * 1000):
        expected, nfe = reference.generate(ref, ids, None, mask_id=eng.cfg.mask_token_id, steps=steps, **KW,
                                           temperature=0.7, seed=2)
        out = eng.generate(ids, **KW, steps=steps, temperature=0.7, seed=2)
        assert torch.equal(out.sequences, expected) and out.nfe == nfe


def test_the_plan_and_its_buffers_are_sized_by_the_masks(eng):
    plan = eng.plan_generation(random_prompt(eng.cfg, 3, 4, seed=1), None, **KW, steps=2 * HUGE)
    assert plan.settings.steps_per_block == 8
    assert tuple(StepBuffers(plan).k.shape) == (8, 3)
    assert tuple(StepState.for_plan(eng.model, plan).k_table.shape) == (3, 8)


def test_infill_steps_beyond_the_masks(eng):
    ids = random_prompt(eng.cfg, 1, 12, seed=5)
    ids[0, 3:7] = eng.cfg.mask_token_id
    want = eng.infill(ids, steps=4, seed=1)
    got = eng.infill(ids, steps=HUGE, seed=1)
    assert torch.equal(got.sequences, want.sequences) and got.nfe == want.nfe == 4


@pytest.mark.parametrize("cache", [None, "prefix"])
def test_serving_steps_beyond_the_masks(eng, cache):
    ids = random_prompt(eng.cfg, 1, 5, seed=8)[0]
    want = eng.generate(ids[None], **KW, steps=16, seed=3, cache=cache)
    with SyncEngine(eng) as seng:
        out = seng.generate(ids, **KW, steps=2 * HUGE, seed=3, cache=cache)
        masked = ids.clone()
        masked[1:3] = eng.cfg.mask_token_id
        filled = seng.infill(masked, steps=HUGE, seed=0)
    assert out.tokens == want.answers[0].tolist() and out.nfe == want.nfe
    assert filled.tokens == eng.infill(masked[None], steps=2, seed=0).sequences[0].tolist()


# ------------------------------------------------------------------ empty answers

@pytest.fixture(scope="module")
def text_eng(tmp_path_factory, kernel_impl):
    path = str(tmp_path_factory.mktemp("text_hostile"))
    write_text_checkpoint(path)
    return Engine.from_pretrained(path)


OPTIONS = dict(gen_length=8, block_length=8, steps=8, seed=0)


def first_token(eng, prompt, **options):
    ids = eng.codec.encode(prompt)
    return int(eng.generate([ids], **OPTIONS, **options).answers[0, 0])


@pytest.mark.parametrize("options", [dict(), dict(stop_at_eos=True), dict(cache="prefix"),
                                     dict(cache="prefix", stop_at_eos=True)],
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_an_answer_whose_first_token_stops_is_empty(text_eng, options):
    """Before: decoding the zero tokens before the stop took argmax over an empty dimension (IndexError)."""
    prompt = "w1 w2 w3"
    stop = [first_token(text_eng, prompt, **options)]
    out = text_eng.generate([text_eng.codec.encode(prompt)], **OPTIONS, stop_token_ids=stop, **options)
    assert out.answer_lengths.tolist() == [0]
    assert text_eng.generate_text(prompt, **OPTIONS, stop_token_ids=stop, **options) == ""
    events = list(text_eng.stream([text_eng.codec.encode(prompt)], **OPTIONS, stop_token_ids=stop, **options))
    assert events[-1].text == [""]
    with SyncEngine(text_eng) as seng:
        done = seng.generate(prompt, **OPTIONS, stop_token_ids=stop, **options)
        streamed = list(seng.stream(prompt, **OPTIONS, stop_token_ids=stop, **options))
    assert (done.answer_length, done.text, done.finish_reason) == (0, "", "stop")
    assert [e.kind for e in streamed][-1] == "done" and streamed[-1].output.text == ""
    assert all(e.text == "" for e in streamed)


# ------------------------------------------------------------------ argument types

@pytest.mark.parametrize("args,name", [
    (dict(temperature="0.5"), "temperature"),
    (dict(temperature=True), "temperature"),
    (dict(cfg_scale="1"), "cfg_scale"),
    (dict(threshold="0.9"), "threshold"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(remasking=["random"]), "remasking"),
    (dict(stop_at_eos="no"), "stop_at_eos"),
    (dict(stop_token_ids="12"), "stop_token_ids"),
    (dict(stop_token_ids=[1.5]), "stop_token_ids"),
    (dict(stop_token_ids=[True]), "stop_token_ids"),
    (dict(stop_token_ids=5), "stop_token_ids"),
    (dict(cache=["prefix"]), "cache"),
])
def test_wrongly_typed_arguments_name_themselves(eng, args, name):
    with pytest.raises(ValueError, match=name):
        eng.generate([[1, 2, 3]], **KW, steps=16, **args)
    with SyncEngine(eng) as seng, pytest.raises(ValueError, match=name):
        seng.generate([1, 2, 3], **KW, steps=16, **args)


@pytest.mark.parametrize("args,name", [(dict(temperature="0"), "temperature"), (dict(threshold="1"), "threshold"),
                                       (dict(steps=2.0), "steps"), (dict(block_length=True), "block_length")])
def test_wrongly_typed_infill_arguments_name_themselves(eng, args, name):
    ids = [[1, eng.cfg.mask_token_id, 3]]
    with pytest.raises(ValueError, match=name):
        eng.infill(ids, **args)
