"""Tensor parallelism on the CPU (gloo): Engine.from_pretrained(..., tensor_parallel=2) against one
process, in float32, on the tiny LLaDA-like (MHA, untied head) and iLLaDA-like (GQA, tied
embeddings) checkpoints; the lifecycle (close, a killed rank, a hung rank, a killed leader)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from checkpoints import write_checkpoint
from prompts import random_prompt
from illada_rt import ConfigError, Engine
from illada_rt.model import weight_bytes

OPTIONS = [dict(), dict(temperature=0.7, seed=3), dict(threshold=0.5), dict(cfg_scale=1.0), dict(cache="prefix"),
           dict(cache="dual"), dict(remasking="random", seed=5), dict(stop_at_eos=True, stop_token_ids=[11, 17, 40])]
KW = dict(gen_length=16, block_length=8, steps=16)


@pytest.fixture(scope="module", params=["llada", "illada"])
def checkpoint_dir(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(f"tp_{request.param}"))
    write_checkpoint(path, request.param)
    return path


@pytest.fixture
def pair(checkpoint_dir, kernel_impl):
    """(one-process engine, two-rank engine) on the same checkpoint. One tensor-parallel engine is
    open at a time in a process (torch.distributed holds one process group per process)."""
    two = Engine.from_pretrained(checkpoint_dir, tensor_parallel=2)
    yield Engine.from_pretrained(checkpoint_dir), two
    two.close()


def test_generation_equals_one_process(pair):
    one, two = pair
    ids = random_prompt(one.cfg, 3, 6, seed=1)
    mask = torch.ones(3, 6, dtype=torch.int64)
    mask[1, :2] = 0                                                       # a left-padded row
    for options in OPTIONS:
        a = one.generate(ids, attention_mask=mask, **KW, **options)
        b = two.generate(ids, attention_mask=mask, **KW, **options)
        assert torch.equal(a.sequences, b.sequences) and a.nfe == b.nfe, options
        assert torch.equal(a.answer_lengths, b.answer_lengths), options


def test_logits_scores_stream_infill(pair):
    one, two = pair
    ids = random_prompt(one.cfg, 2, 9, seed=2)
    la, lb = one.logits(ids), two.logits(ids)
    assert la.shape == lb.shape == (2, 9, one.cfg.vocab_size)
    assert float((la - lb).abs().max()) <= 1e-5 * float(la.abs().max())
    prompt, answer = ids[0, :5].tolist(), ids[0, 5:].tolist()
    assert two.log_likelihood(prompt, answer, mc_num=4, batch_size=2) == pytest.approx(
        one.log_likelihood(prompt, answer, mc_num=4, batch_size=2), rel=1e-5)
    torch.testing.assert_close(two.score_choices(prompt, [answer, answer[:2]]),
                               one.score_choices(prompt, [answer, answer[:2]]), rtol=1e-5, atol=1e-5)
    events = [(e.block, e.new_tokens.tolist()) for e in two.stream(ids, **KW)]
    assert [(e.block, e.new_tokens.tolist()) for e in one.stream(ids, **KW)] == events
    holes = ids.clone()
    holes[:, [2, 5, 6]] = one.cfg.mask_token_id
    assert torch.equal(one.infill(holes).sequences, two.infill(holes).sequences)


def test_a_stream_left_early_does_not_derail_the_next_call(pair):
    one, two = pair
    ids = random_prompt(one.cfg, 1, 4, seed=3)
    it = two.stream(ids, every_step=True, **KW)
    next(it)
    it.close()
    it = two.stream(ids, **KW)                           # abandoned without close
    next(it)
    assert torch.equal(two.generate(ids, **KW).sequences, one.generate(ids, **KW).sequences)
    with pytest.raises(RuntimeError, match="interrupted"):
        next(it)


def test_bad_arguments_raise_on_the_leader_and_the_ranks_go_on(pair):
    one, two = pair
    with pytest.raises(ValueError, match="mask token"):
        two.generate([[one.cfg.mask_token_id]], **KW)
    ids = random_prompt(one.cfg, 1, 4, seed=4)
    assert torch.equal(two.generate(ids, **KW).sequences, one.generate(ids, **KW).sequences)


@pytest.mark.parametrize("fmt,exact", [("int8", True), ("int4", True), ("fp8", False)])
def test_quantized_shards(tmp_path, fmt, exact):
    """int8/int4 ranks hold slices of the codes one process holds (int4 groups whole); fp8 also
    quantizes activations per token over each rank's slice of a row-parallel input, so it agrees
    closely but not token for token."""
    write_checkpoint(str(tmp_path), "llada", d_model=64, mlp_hidden_size=128)
    kw = dict(quantization=fmt, group_size=16)
    one = Engine.from_pretrained(tmp_path, **kw)
    with Engine.from_pretrained(tmp_path, tensor_parallel=2, **kw) as two:
        ids = random_prompt(one.cfg, 2, 6, seed=5)
        a, b = one.generate(ids, **KW).sequences, two.generate(ids, **KW).sequences
    if exact:
        assert torch.equal(a, b)
    else:
        assert float((a == b).double().mean()) > 0.7


def test_one_tensor_parallel_engine_at_a_time(pair, checkpoint_dir):
    with pytest.raises(RuntimeError, match="another tensor-parallel engine"):
        Engine.from_pretrained(checkpoint_dir, tensor_parallel=2)
    one, two = pair
    assert torch.equal(two.generate([[1, 2]], **KW).sequences, one.generate([[1, 2]], **KW).sequences)


def test_a_rank_holds_about_half_the_weights(pair):
    one, two = pair
    assert weight_bytes(two.model)["total"] <= 0.55 * weight_bytes(one.model)["total"]


def test_the_split_must_divide_the_kv_heads(tmp_path):
    write_checkpoint(str(tmp_path), "illada")                              # 2 KV heads
    with pytest.raises(ConfigError, match="must divide the KV heads"):
        Engine.from_pretrained(tmp_path, tensor_parallel=4)
    with pytest.raises(ValueError, match="positive integer"):
        Engine.from_pretrained(tmp_path, tensor_parallel=0)


def test_close_stops_the_ranks_and_refuses_more(tmp_path):
    write_checkpoint(str(tmp_path), "illada")
    eng = Engine.from_pretrained(tmp_path, tensor_parallel=2)
    procs = list(eng._followers.procs)
    eng.close()
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError, match="closed"):
        eng.generate([[1, 2]], **KW)
    eng.close()                                                            # idempotent


def test_a_killed_rank_is_a_clear_error_and_closes_the_engine(tmp_path):
    write_checkpoint(str(tmp_path), "illada")
    eng = Engine.from_pretrained(tmp_path, tensor_parallel=2)
    eng._followers.procs[0].kill()
    eng._followers.procs[0].wait(10)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="rank 1 exited"):
        eng.generate([[1, 2]], **KW)
    assert time.monotonic() - start < 30 and eng.closed


def test_a_hung_rank_is_a_clear_error_in_bounded_time(tmp_path, monkeypatch):
    monkeypatch.setenv("ILLADA_TP_TIMEOUT_S", "5")
    write_checkpoint(str(tmp_path), "illada")
    eng = Engine.from_pretrained(tmp_path, tensor_parallel=2)
    proc = eng._followers.procs[0]
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="tensor parallelism"):
            eng.generate([[1, 2]], **KW)
        assert time.monotonic() - start < 60 and eng.closed
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        eng.close()
    assert proc.poll() is not None


def test_no_rank_outlives_a_killed_leader(tmp_path):
    write_checkpoint(str(tmp_path), "illada")
    script = textwrap.dedent(f"""
        import sys, time
        from illada_rt import Engine
        eng = Engine.from_pretrained({str(tmp_path)!r}, tensor_parallel=2)
        print(" ".join(str(p.pid) for p in eng._followers.procs), flush=True)
        time.sleep(600)
    """)
    leader = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in leader.stdout.readline().split()]
        assert pids
        leader.kill()
        leader.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        assert not any(_alive(p) for p in pids)
    finally:
        leader.kill()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:                                   # a zombie is gone too
        return f.read().split()[2] != "Z"


def test_serving_a_two_rank_engine(pair):
    """AsyncEngine over the two-rank engine: batched rows, a KV-cache cohort and an infill each get
    what one process gives alone (every rank runs the row batcher's step and the cohort's loop)."""
    import asyncio

    from illada_rt.serving import AsyncEngine

    one, two = pair
    prompts = [random_prompt(one.cfg, 1, 3 + i, seed=10 + i)[0] for i in range(4)]
    options = [dict(KW, seed=1), dict(KW, seed=2, temperature=0.8), dict(KW, seed=3), dict(KW, seed=4, cache="dual")]
    holes = random_prompt(one.cfg, 1, 7, seed=20)[0]
    holes[[1, 4]] = one.cfg.mask_token_id

    async def run():
        async with AsyncEngine(two, max_batch_size=3) as aeng:
            outs = await asyncio.gather(*[aeng.generate(p, **o) for p, o in zip(prompts, options)])
            filled = await aeng.infill(holes)
        return outs, filled

    outs, filled = asyncio.run(run())
    for p, o, out in zip(prompts, options, outs):
        assert out.tokens == one.generate(p[None], **o).answers[0].tolist()
    assert filled.tokens == one.infill(holes[None]).sequences[0].tolist()


def test_the_command_line_over_two_ranks(tmp_path):
    """`illada-rt generate --tensor-parallel 2` prints what one process prints, and leaves no rank."""
    from checkpoints import write_text_checkpoint

    write_text_checkpoint(str(tmp_path))
    argv = [sys.executable, "-m", "illada_rt.cli", "generate", "w1 w2 w3", "--model", str(tmp_path),
            "--gen-length", "8", "--block-length", "8", "--no-live"]
    one = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    two = subprocess.run(argv + ["--tensor-parallel", "2"], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    assert two.stdout == one.stdout and one.stdout.strip()
