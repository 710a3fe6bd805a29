"""The lm-evaluation-harness model "illada_rt" (integrations/lm_eval.py) and `illada-rt eval`:
the harness's numbers equal direct Engine calls on the same items, the same seed gives the same
scores, bad model_args fail naming the argument, and nothing touches the network (the local task
in lm_eval_tasks/ reads JSONL files beside it)."""
import json
import os
import socket
import subprocess
import sys
import warnings

import pytest
import torch

pytest.importorskip("lm_eval")

from checkpoints import write_text_checkpoint  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from illada_rt import DEMO_MODEL_DIR, Engine  # noqa: E402
from illada_rt.cli import main  # noqa: E402
from illada_rt.integrations.lm_eval import IlladaLM, ModelArgsError, run_tasks  # noqa: E402

TASKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lm_eval_tasks")
# small settings for the demo model: answers of 8 tokens in one block, one token per step
FAST = dict(mc_num=16, batch_size=8, gen_length=8, block_length=8, steps=8, seed=5)


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection raises; the list holds the addresses something tried to reach."""
    tried = []

    def refuse(self, address, *args):
        tried.append(address)
        raise OSError(f"test: no network ({address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield tried
    assert not tried, f"network access attempted: {tried}"


@pytest.fixture(scope="module")
def demo_engine(kernel_impl):
    return Engine.from_pretrained(DEMO_MODEL_DIR, kernels=kernel_impl)


def loglikelihood_request(context, continuation):
    return Instance("loglikelihood", {}, (context, continuation), 0)


def generation_request(context, **gen_kwargs):
    return Instance("generate_until", {}, (context, gen_kwargs), 0)


def direct_pair(engine, context, continuation):
    """A loglikelihood request's tokens, encoded as eval_llada.py does (no trailing spaces here)."""
    prompt = engine.codec.encode(context)
    return prompt, engine.codec.encode(context + continuation)[len(prompt):]


def direct_greedy(engine, prompt, answer, cfg_scale=0.0):
    n = len(answer)
    out = engine.generate(torch.tensor([prompt]), gen_length=n, block_length=n, steps=n, cfg_scale=cfg_scale)
    return out.answers[0].tolist() == answer


def direct_answer(engine, context, max_gen_toks, until, block_length=8, steps_per_block=8, seed=0, **options):
    """generate_until of one request alone, through Engine.generate: whole blocks, then the cut."""
    ids, _ = engine.encode_prompts([context])
    gen_length = -(-max_gen_toks // block_length) * block_length
    out = engine.generate(ids, gen_length=gen_length, block_length=block_length,
                          steps=gen_length // block_length * steps_per_block, stop_at_eos=True, seed=seed, **options)
    n = min(int(out.answer_lengths[0]), max_gen_toks)
    text = engine.codec.decode(out.answers[0, :n].tolist())
    cuts = [text.find(u) for u in until if u in text]
    return text[:min(cuts)] if cuts else text


# ---------------------------------------------------------------------- registration, import cost

def test_importing_illada_rt_does_not_import_the_harness():
    code = ("import sys, illada_rt, illada_rt.cli, illada_rt.integrations, illada_rt.integrations.lm_eval_args; "
            "assert 'lm_eval' not in sys.modules, 'lm_eval imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registered_beside_the_harness_models():
    assert get_model("illada_rt") is IlladaLM
    assert get_model("dummy").__name__ == "DummyLM"     # the harness's own models stay reachable


# ---------------------------------------------------------------------- the local task, end to end

def test_local_task_scores_equal_direct_engine_calls(no_network, demo_engine):
    results = run_tasks(DEMO_MODEL_DIR, ["illada_local"], model_args=dict(FAST, device="cpu", dtype="float32"),
                        limit=4, include_path=TASKS, log_samples=True)
    mc, gen = results["samples"]["illada_local_mc"], results["samples"]["illada_local_gen"]
    assert len(mc) == len(gen) == 4

    correct = []
    for sample in mc:
        scores = []
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            prompt, answer = direct_pair(demo_engine, context, continuation)
            mc_num, batch_size = (1, 1) if len(answer) == 1 else (16, 8)     # one token: one exact draw
            logp = demo_engine.log_likelihood(prompt, answer, mc_num=mc_num, batch_size=batch_size, seed=5)
            assert resp[0] == (logp, direct_greedy(demo_engine, prompt, answer))   # exactly: same call, same seed
            scores.append(logp)
        correct.append(max(range(len(scores)), key=scores.__getitem__) == sample["doc"]["answer"])
    assert results["results"]["illada_local_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))

    hits = []
    for sample in gen:
        context, gen_kwargs = sample["arguments"][0]
        text = direct_answer(demo_engine, context, gen_kwargs["max_gen_toks"], gen_kwargs["until"])
        assert sample["resps"][0][0] == text
        hits.append(text.strip() == sample["target"])
    assert results["results"]["illada_local_gen"]["exact_match,strip"] == pytest.approx(sum(hits) / len(hits))
    assert 0 < sum(hits) < len(hits) and 0 < sum(correct)     # the demo model gets some, not all


def test_eval_command_prints_the_table_and_writes_json(no_network, tmp_path, capsys):
    out = tmp_path / "results.json"
    args = ",".join(f"{k}={v}" for k, v in FAST.items())
    rc = main(["eval", "--model", DEMO_MODEL_DIR, "--tasks", "illada_local_mc,illada_local_gen", "--include-path",
               TASKS, "--limit", "3", "--model-args", args, "--gen-kwargs", "max_gen_toks=4", "--output", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "illada_local_mc" in captured.out and "exact_match" in captured.out and "acc" in captured.out
    assert "illada_rt loglikelihood" in captured.err and "illada_rt generate_until" in captured.err  # progress
    saved = json.loads(out.read_text())
    assert set(saved["results"]) == {"illada_local_mc", "illada_local_gen"}
    assert saved["n-samples"]["illada_local_mc"]["effective"] == 3
    assert saved["config"]["model_args"]["steps"] == 8
    assert saved["configs"]["illada_local_gen"]["generation_kwargs"]["max_gen_toks"] == 4


def test_eval_command_errors_are_one_line(tmp_path, capsys, monkeypatch):
    rc = main(["eval", "--tasks", "illada_local_mc", "--include-path", TASKS, "--model-args", "pretrained=/x"])
    assert rc == 2 and "leave pretrained out of model_args" in capsys.readouterr().err
    rc = main(["eval", "--tasks", "illada_local_mc", "--include-path", TASKS, "--model-args", "cache=dual,cfg_scale=1"])
    assert rc == 2 and "cache='dual'" in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "illada_rt.integrations.lm_eval")
    monkeypatch.setitem(sys.modules, "lm_eval", None)           # import lm_eval now raises ImportError
    rc = main(["eval", "--tasks", "illada_local_mc"])
    assert rc == 2 and 'pip install "illada_rt[eval]"' in capsys.readouterr().err


# ---------------------------------------------------------------------- loglikelihood

PAIRS = [("HAMLET.\nNow is the winter of our", " discontent made glorious"),
         ("KING.\nI pray you,", " sir, what news"), ("", "ROMEO.")]


def test_loglikelihood_is_seeded_and_equals_the_engine(demo_engine):
    requests = [loglikelihood_request(c, t) for c, t in PAIRS]
    lm = IlladaLM.from_engine(demo_engine, mc_num=16, batch_size=4, seed=11, check_greedy=False)
    first = lm.loglikelihood(requests)
    assert first == lm.loglikelihood(requests)
    assert first == IlladaLM.from_engine(demo_engine, mc_num=16, batch_size=4, seed=11,
                                         check_greedy=False).loglikelihood(requests)
    other = IlladaLM.from_engine(demo_engine, mc_num=16, batch_size=4, seed=12, check_greedy=False)
    assert [s for s, _ in other.loglikelihood(requests)] != [s for s, _ in first]   # multi-token: seed matters
    assert all(greedy is False for _, greedy in first)
    eos = demo_engine.cfg.eos_token_id
    for (context, continuation), (score, _) in zip(PAIRS, first):
        prompt, answer = direct_pair(demo_engine, context, continuation)
        prompt = prompt or [eos]                     # an empty context: the EOS token as prefix
        assert score == demo_engine.log_likelihood(prompt, answer, mc_num=16, batch_size=4, seed=11)


def test_one_token_continuations_take_one_exact_draw(demo_engine):
    context, continuation = "KING.\nI pray you,", " sir"
    prompt, answer = direct_pair(demo_engine, context, continuation)
    assert len(answer) == 1
    score, _ = IlladaLM.from_engine(demo_engine, mc_num=16, batch_size=4).loglikelihood(
        [loglikelihood_request(context, continuation)])[0]
    assert score == demo_engine.log_likelihood(prompt, answer, mc_num=1, batch_size=1)
    for seed in (0, 1):   # every draw masks the one token: the full estimate is the same number
        full = demo_engine.log_likelihood(prompt, answer, mc_num=16, batch_size=4, seed=seed)
        assert full == pytest.approx(score, rel=1e-5)
    assert score == pytest.approx(float(demo_engine.score_choices(prompt, [answer])[0]), rel=1e-5)


def test_trailing_spaces_move_to_the_continuation(demo_engine):
    lm = IlladaLM.from_engine(demo_engine)
    assert lm.encode_pair("KING.\nI pray you, ", "sir") == lm.encode_pair("KING.\nI pray you,", " sir")
    prompt, answer = lm.encode_pair("KING.\nI pray you,", " sir")
    assert prompt + answer == demo_engine.codec.encode("KING.\nI pray you, sir")


@pytest.mark.parametrize("cfg_scale", [0.0, 1.0])
def test_is_greedy_follows_llada_suffix_greedy_prediction(demo_engine, cfg_scale):
    context = "KING.\nCome hither,"
    prompt = demo_engine.codec.encode(context)
    out = demo_engine.generate(torch.tensor([prompt]), gen_length=3, block_length=3, steps=3, cfg_scale=cfg_scale)
    greedy_text = demo_engine.codec.decode(out.answers[0].tolist())
    assert demo_engine.codec.encode(context + greedy_text)[len(prompt):] == out.answers[0].tolist()
    lm = IlladaLM.from_engine(demo_engine, mc_num=8, batch_size=8, cfg_scale=cfg_scale)
    results = lm.loglikelihood([loglikelihood_request(context, greedy_text),
                                loglikelihood_request(context, " villain knave rogue")])
    assert [greedy for _, greedy in results] == [True, False]
    assert results[0][0] == demo_engine.log_likelihood(prompt, out.answers[0].tolist(), mc_num=8, batch_size=8,
                                                       cfg_scale=cfg_scale, seed=0)
    unchecked = IlladaLM.from_engine(demo_engine, mc_num=8, batch_size=8, cfg_scale=cfg_scale, check_greedy=False)
    assert unchecked.loglikelihood([loglikelihood_request(context, greedy_text)])[0] == (results[0][0], False)


def test_loglikelihood_rolling_is_refused(demo_engine):
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        IlladaLM.from_engine(demo_engine).loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("x",), 0)])


# ---------------------------------------------------------------------- generate_until

GEN = [("I pray you,", dict(until=["\n"], max_gen_toks=3)),
       ("KING.\nCome hither,", dict(until=["\n", "."], max_gen_toks=6)),
       ("My lord, I", dict(until=["."], max_gen_toks=6)),
       ("HAMLET.\nTo be, or not to be, that is", dict(until=[], max_gen_toks=8)),
       ("Farewell,", dict(until="KING", max_gen_toks=6)),
       ("Enter", dict(until=["\n\n"], max_gen_toks=12))]   # 12 tokens: 2 blocks of 8, cut to 12


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_generate_until_equals_engine_alone_in_any_batch(demo_engine, temperature):
    requests = [generation_request(c, **kw) for c, kw in GEN]
    settings = dict(gen_length=8, block_length=8, steps=8, seed=3, temperature=temperature)
    alone = IlladaLM.from_engine(demo_engine, batch_size=1, **settings).generate_until(requests)
    assert IlladaLM.from_engine(demo_engine, batch_size=4, **settings).generate_until(requests) == alone
    for j, ((context, kw), text) in enumerate(zip(GEN, alone)):
        until = [kw["until"]] if isinstance(kw["until"], str) else kw["until"]
        assert text == direct_answer(demo_engine, context, kw["max_gen_toks"], until, seed=3 + j,
                                     temperature=temperature)
        assert len(demo_engine.codec.encode(text)) <= kw["max_gen_toks"]
        assert not any(u in text for u in until)


def test_generate_until_steps_follow_the_model_args_rate(demo_engine):
    # gen_length 16 in 8 steps with blocks of 8: 4 steps a block, so 20 tokens (3 blocks) take 12 steps
    lm = IlladaLM.from_engine(demo_engine, gen_length=16, block_length=8, steps=8)
    assert lm.settings.generation_options(20) == dict(
        gen_length=24, block_length=8, steps=12, temperature=0.0, cfg_scale=0.0, remasking="low_confidence",
        threshold=None, cache=None, stop_at_eos=True)
    text = lm.generate_until([generation_request("Enter", until=[], max_gen_toks=20)])[0]
    assert text == direct_answer(demo_engine, "Enter", 20, [], steps_per_block=4)
    lm = IlladaLM.from_engine(demo_engine, gen_length=8, block_length=8, steps=8)      # no max_gen_toks: gen_length
    assert lm.generate_until([generation_request("Enter", until=[])]) == [direct_answer(demo_engine, "Enter", 8, [])]


@pytest.mark.parametrize("options", [dict(cache="prefix"), dict(threshold=0.5), dict(cfg_scale=1.0)])
def test_generate_until_passes_the_decoding_options(demo_engine, options):
    lm = IlladaLM.from_engine(demo_engine, gen_length=16, block_length=8, steps=16, **options)
    text = lm.generate_until([generation_request("KING.\nCome hither,", until=["\n"], max_gen_toks=16)])[0]
    assert text == direct_answer(demo_engine, "KING.\nCome hither,", 16, ["\n"], **options)


def test_task_sampling_keys_warn_once(demo_engine):
    lm = IlladaLM.from_engine(demo_engine, gen_length=8, block_length=8, steps=8)
    greedy = dict(until=["\n"], max_gen_toks=4, do_sample=False, temperature=0.0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        lm.generate_until([generation_request("Enter", **greedy),
                           generation_request("Enter", **dict(greedy, do_sample=True)),
                           generation_request("Enter", **dict(greedy, do_sample=True, top_p=0.9))])
    assert [str(w.message).split(";")[0] for w in record] == [
        "illada_rt: generate_until does not use the task's do_sample=True",
        "illada_rt: generate_until does not use the task's top_p=0.9"]


# ---------------------------------------------------------------------- chat templates

def test_chat_template_wraps_each_context(tmp_path):
    write_text_checkpoint(str(tmp_path))
    engine = Engine.from_pretrained(str(tmp_path))
    lm = IlladaLM.from_engine(engine, chat=True, gen_length=8, block_length=8, steps=8)
    ids, _ = engine.encode_prompts(["w1 w2"], chat=True)
    assert lm.encode_context("w1 w2") == ids[0].tolist()
    prompt, answer = lm.encode_pair("w1 w2", " w3 w4")
    assert prompt == ids[0].tolist() and len(answer) == 2
    with pytest.raises(ModelArgsError, match="both apply the chat template"):
        lm.apply_chat_template([{"role": "user", "content": "w1"}])
    # the harness's own apply_chat_template: contexts arrive rendered, encoded without added tokens
    harness = IlladaLM.from_engine(engine, gen_length=8, block_length=8, steps=8)
    rendered = harness.apply_chat_template([{"role": "user", "content": "w1 w2"}])
    assert harness.encode_context(rendered) == ids[0].tolist()


# ---------------------------------------------------------------------- bad model_args

@pytest.mark.parametrize("arg_string,message", [
    ("stepz=8", "unknown key 'stepz'"),
    ("steps=abc", "steps must be an integer"),
    ("threshold=high", "threshold must be a number or none"),
    ("check_greedy=maybe", "check_greedy must be true or false"),
    ("batch_size=auto", "batch_size must be an integer"),
    ("max_batch_size=64", "unknown key 'max_batch_size' .illada_rt takes a fixed batch_size"),
    ("cache=prefix,cfg_scale=1.0", "cache='prefix' does not support classifier-free guidance"),
    ("cache=full", "cache must be None or one of"),
    ("mc_num=100,batch_size=32", "mc_num 100 is not a multiple of batch_size 32"),
    ("steps=130", "steps 130 is not divisible by the number of blocks 4"),
    ("gen_length=100", "gen_length 100 is not divisible by block_length 32"),
    ("threshold=2", "threshold must .*1]"),
    ("remasking=top", "remasking must be one of"),
    ("gen_length=512", "exceeds max_sequence_length 256"),
    ("chat=true", "chat=true, but .* has no chat_template"),
])
def test_bad_model_args_name_the_argument(arg_string, message):
    with pytest.raises(ModelArgsError, match=message):
        IlladaLM.create_from_arg_string(f"pretrained={DEMO_MODEL_DIR},{arg_string}")


def test_model_args_need_a_checkpoint_and_take_strings():
    with pytest.raises(ModelArgsError, match="pretrained=DIR"):
        IlladaLM.create_from_arg_string("steps=8")
    lm = IlladaLM.create_from_arg_obj({"pretrained": DEMO_MODEL_DIR, "steps": "16", "gen_length": 16,
                                       "block_length": "8", "cache": "none", "chat": "false"},
                                      {"batch_size": "4", "device": "cpu"})   # as simple_evaluate passes them
    assert (lm.settings.steps, lm.settings.block_length, lm.settings.batch_size) == (16, 8, 4)
    assert lm.settings.cache is None and lm.settings.dtype == "float32" and lm.settings.kernels is None
    assert IlladaLM.from_engine(lm.engine).settings.dtype == "float32"
    with pytest.raises(ModelArgsError, match="dtype apply when loading"):
        IlladaLM.from_engine(lm.engine, dtype="bfloat16")
