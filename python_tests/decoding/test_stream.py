"""Engine.stream: events per block (and per step) that add up to generate()'s output."""
import pytest
import torch

from checkpoints import write_text_checkpoint
from prompts import random_prompt
from illada_rt import Engine

KW = dict(steps=12, gen_length=24, block_length=8, seed=0)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, kernel_impl):
    path = tmp_path_factory.mktemp("stream_text")
    write_text_checkpoint(str(path))
    return Engine.from_pretrained(str(path))


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("options", [dict(), dict(threshold=0.4), dict(cache="dual"), dict(cache="prefix"),
                                     dict(cfg_scale=1.0, temperature=0.5)])
def test_block_events_concatenate_to_generate(engines, layout, options):
    eng = engines[layout][0]
    ids = random_prompt(eng.cfg, 2, 6, seed=1)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    out = eng.generate(ids, mask, **KW, **options)
    events = list(eng.stream(ids, mask, **KW, **options))
    assert [e.kind for e in events] == ["block"] * 3
    assert [e.block for e in events] == [0, 1, 2]
    assert torch.equal(torch.cat([e.new_tokens for e in events], 1), out.answers)
    assert torch.equal(events[-1].tokens, out.answers)
    assert events[-1].nfe == out.nfe
    for e in events:
        assert e.text is None                                  # no tokenizer in this checkpoint
        assert e.tokens.shape[1] == 8 * (e.block + 1)
        assert not bool((e.tokens == eng.cfg.mask_token_id).any())


@pytest.mark.parametrize("options", [dict(), dict(threshold=0.4), dict(cache="prefix")])
def test_every_step_yields_the_canvas_after_each_step(engines, options):
    eng = engines["llada"][0]
    ids = random_prompt(eng.cfg, 2, 5, seed=2)
    out = eng.generate(ids, **KW, **options)
    events = list(eng.stream(ids, every_step=True, **KW, **options))
    steps = [e for e in events if e.kind == "step"]
    assert len(steps) == out.nfe and [e.nfe for e in steps] == list(range(1, out.nfe + 1))
    assert len(events) == out.nfe + 3
    masks = [int((e.tokens == eng.cfg.mask_token_id).sum()) for e in steps]
    assert masks == sorted(masks, reverse=True) and masks[-1] == 0
    assert steps[0].tokens.shape == out.sequences.shape and masks[0] > 0
    assert torch.equal(steps[-1].tokens, out.sequences)
    assert events[-1].kind == "block"
    for prev, e in zip(events, events[1:]):                   # a block event follows its block's last step
        if e.kind == "block":
            assert prev.kind == "step" and prev.block == e.block


def test_early_stop_ends_the_stream_with_the_rest_of_the_answer(engines):
    eng = engines["llada"][0]
    ids = random_prompt(eng.cfg, 1, 5, seed=13)
    kw = dict(steps=16, gen_length=32, block_length=8, seed=0)
    stop = int(eng.generate(ids, **kw).answers[0, 3])
    out = eng.generate(ids, stop_at_eos=True, stop_token_ids=[stop], **kw)
    events = list(eng.stream(ids, stop_at_eos=True, stop_token_ids=[stop], **kw))
    assert len(events) == 1 and events[0].tokens.shape[1] == 32
    assert torch.equal(torch.cat([e.new_tokens for e in events], 1), out.answers)


def test_text_events(text_model):
    ids = [text_model.codec.encode("w1 w2 w3")]
    kw = dict(steps=8, gen_length=16, block_length=8, seed=4)
    events = list(text_model.stream(ids, **kw))
    assert len(events) == 2
    codec = text_model.codec
    for e in events:
        assert e.text == [codec.decode(e.tokens[0, : _before_eos(e.tokens[0], text_model.cfg.eos_token_id)].tolist())]
    assert events[-1].text[0] == text_model.generate_text("w1 w2 w3", **kw)


def _before_eos(answer, eos):
    hits = (answer == eos).nonzero()
    return int(hits[0]) if len(hits) else len(answer)


def test_arguments_are_checked_before_the_first_event(engines):
    eng = engines["llada"][0]
    with pytest.raises(ValueError, match="not divisible by block_length"):
        eng.stream([[1, 2, 3]], gen_length=12, block_length=8)
    with pytest.raises(ValueError, match="cache must be"):
        eng.stream([[1, 2, 3]], cache="window")
    with pytest.raises(TypeError):
        eng.stream([[1, 2, 3]], gen_len=8)


def test_one_event_type_for_the_engine_and_serving(engines):
    from illada_rt.engine import StreamEvent
    from illada_rt.serving import RequestEvent
    assert RequestEvent is StreamEvent
    eng = engines["llada"][0]
    events = list(eng.stream(random_prompt(eng.cfg, 2, 5, seed=3), every_step=True, **KW))
    assert events and all(type(e) is StreamEvent and isinstance(e.tokens, torch.Tensor) and e.output is None
                          for e in events)
