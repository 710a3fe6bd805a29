"""The shared engine (illada_rt.serving): batched requests give their alone results; queue, cancel, shutdown."""
import asyncio
import threading
import time

import pytest
import torch

from prompts import random_prompt, varied_requests
from illada_rt.decoding.stream import StreamEvent
from illada_rt.serving import (AsyncEngine, EngineClosedError, QueueFullError, RequestCancelledError, RequestEvent,
                               RequestTimeoutError, ServingEngine, SyncEngine)
from illada_rt.serving.builder import generation_request, infill_request
from illada_rt.serving.requests import CohortRequest, InfillRequest, RowRequest


def _alone(eng, reqs):
    return [eng.generate(ids[None], **opts).answers[0].tolist() for ids, opts in reqs]


async def _together(eng, reqs, **kw):
    async with AsyncEngine(eng, **kw) as aeng:
        return await asyncio.gather(*[aeng.generate(ids, **opts) for ids, opts in reqs]), aeng.stats()


SETTINGS = [
    dict(),
    dict(temperature=0.8),
    dict(remasking="random"),
    dict(threshold=0.05),
    dict(cfg_scale=1.5),
    dict(temperature=0.5, threshold=0.02),
]


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "greedy")
def test_batched_requests_get_their_alone_tokens(engines, layout, settings):
    eng, _ = engines[layout]
    reqs = varied_requests(eng.cfg, 7, seed=len(settings) + 3 * bool(layout == "illada"), **settings)
    outs, stats = asyncio.run(_together(eng, reqs, max_batch_size=3))
    assert [o.tokens for o in outs] == _alone(eng, reqs)
    assert stats["mean_batch_size"] > 1            # requests did share steps
    assert stats["requests_completed"] == len(reqs) and stats["requests_failed"] == 0
    for o, (ids, opts) in zip(outs, reqs):
        alone = eng.generate(ids[None], **opts)
        assert o.nfe == alone.nfe and o.prompt_tokens == len(ids) and o.seed == opts["seed"]


def test_early_stop_per_request(engines):
    eng, _ = engines["llada"]
    reqs = varied_requests(eng.cfg, 6, seed=11)
    full = _alone(eng, reqs)
    stop = full[0][2]
    reqs = [(ids, dict(opts, stop_at_eos=True, stop_token_ids=[stop])) for ids, opts in reqs]
    outs, _ = asyncio.run(_together(eng, reqs, max_batch_size=4))
    for o, (ids, opts) in zip(outs, reqs):
        alone = eng.generate(ids[None], **opts)
        assert o.tokens == alone.answers[0].tolist() and o.nfe == alone.nfe
        assert o.answer_length == int(alone.answer_lengths[0])
        assert o.finish_reason == ("stop" if o.answer_length < len(o.tokens) else "length")
    assert outs[0].finish_reason == "stop" and outs[0].answer_length == full[0].index(stop)


def test_stream_events_cover_the_answer(engines):
    eng, _ = engines["illada"]
    reqs = varied_requests(eng.cfg, 3, seed=5)

    async def run():
        async with AsyncEngine(eng, max_batch_size=2) as aeng:
            async def collect(ids, opts):
                return [e async for e in aeng.stream(ids, every_step=True, **opts)]
            return await asyncio.gather(*[collect(ids, opts) for ids, opts in reqs])
    for events, (ids, opts), alone in zip(asyncio.run(run()), reqs, _alone(eng, reqs)):
        blocks = [e for e in events if e.kind == "block"]
        steps = [e for e in events if e.kind == "step"]
        assert events[-1].kind == "done" and events[-1].output.tokens == alone
        assert sum((e.new_tokens for e in blocks), []) == alone
        assert len(blocks) == opts["gen_length"] // opts["block_length"]
        assert len(steps) == events[-1].output.nfe
        assert steps[0].tokens.count(eng.cfg.mask_token_id) > 0 and steps[-1].tokens == alone


def test_sync_engine_from_threads(engines):
    eng, _ = engines["llada"]
    reqs = varied_requests(eng.cfg, 6, seed=21, temperature=0.3)
    results = [None] * len(reqs)
    with SyncEngine(eng, max_batch_size=4) as seng:
        def call(i):
            results[i] = seng.generate(reqs[i][0], **reqs[i][1]).tokens
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == _alone(eng, reqs)


def test_exclusive_requests_cache_and_infill(engines):
    eng, _ = engines["llada"]
    ids, opts = varied_requests(eng.cfg, 1, seed=3)[0]
    opts = dict(opts, gen_length=16, block_length=8, steps=8)
    masked = random_prompt(eng.cfg, 1, 12, seed=9)[0]
    masked[[2, 3, 7]] = eng.cfg.mask_token_id
    with SyncEngine(eng) as seng:
        for cache in ("prefix", "dual"):
            out = seng.generate(ids, cache=cache, **opts)
            alone = eng.generate(ids[None], cache=cache, **opts)
            assert out.tokens == alone.answers[0].tolist() and out.nfe == alone.nfe
        filled = seng.infill(masked, steps=3, seed=4)
        assert filled.tokens == eng.infill(masked[None], steps=3, seed=4).sequences[0].tolist()
        with pytest.raises(ValueError, match="no mask"):
            seng.infill(ids)


def test_bad_requests_raise_in_the_caller(engines):
    eng, _ = engines["llada"]
    bad = random_prompt(eng.cfg, 1, 6, seed=1)[0]
    bad[2] = eng.cfg.mask_token_id
    with SyncEngine(eng) as seng:
        with pytest.raises(ValueError, match="mask token"):
            seng.generate(bad, gen_length=8, block_length=8, steps=8)
        with pytest.raises(ValueError, match="one prompt"):
            seng.generate(random_prompt(eng.cfg, 2, 6, seed=1), gen_length=8, block_length=8, steps=8)
        with pytest.raises(ValueError, match="divisible"):
            seng.generate(bad[:2], gen_length=10, block_length=4, steps=8)
        with pytest.raises(ValueError, match="timeout"):
            seng.generate(bad[:2], gen_length=8, block_length=8, steps=8, timeout=0)
        assert seng.stats()["requests_submitted"] == 0


def _slow_step(seng, delay):
    """Make every batched step take at least `delay` seconds (for queue and timing tests)."""
    step = seng.scheduler.batcher.step

    def slow(rows):
        time.sleep(delay)
        return step(rows)
    seng.scheduler.batcher.step = slow


def test_queue_bound_timeout_and_cancel(engines):
    eng, _ = engines["llada"]
    ids, opts = varied_requests(eng.cfg, 1, seed=7)[0]
    opts = dict(opts, gen_length=16, block_length=4, steps=16)
    with SyncEngine(eng, max_batch_size=1, max_queue=1) as seng:
        _slow_step(seng, 0.02)
        first = seng.stream(ids, **opts)
        queued = []
        with pytest.raises(QueueFullError, match="queue is full"):
            for _ in range(3):   # the first may still wait in the queue when the second comes
                queued.append(seng.stream(ids, **opts))
        assert next(first).kind == "block"
        for s in [first] + queued:
            s.close()             # leaving a stream cancels its request
        with pytest.raises(RequestTimeoutError):
            seng.generate(ids, timeout=0.05, **opts)
        assert seng.generate(ids, **opts).tokens == eng.generate(ids[None], **opts).answers[0].tolist()
        stats = seng.stats()
    assert stats["requests_rejected"] >= 1 and stats["requests_failed"] >= 2


def test_async_cancel_leaves_others_running(engines):
    eng, _ = engines["llada"]
    reqs = varied_requests(eng.cfg, 3, seed=8)

    async def run():
        async with AsyncEngine(eng, max_batch_size=4) as aeng:
            _slow_step(aeng, 0.01)
            tasks = [asyncio.ensure_future(aeng.generate(ids, **opts)) for ids, opts in reqs]
            await asyncio.sleep(0.03)
            tasks[1].cancel()
            return await asyncio.gather(*tasks, return_exceptions=True)
    outs = asyncio.run(run())
    alone = _alone(eng, reqs)
    assert isinstance(outs[1], asyncio.CancelledError)
    assert outs[0].tokens == alone[0] and outs[2].tokens == alone[2]


def test_shutdown_graceful_and_abort(engines):
    eng, _ = engines["llada"]
    reqs = varied_requests(eng.cfg, 4, seed=9)
    seng = SyncEngine(eng, max_batch_size=2)
    streams = [seng.stream(ids, **opts) for ids, opts in reqs]
    seng.close(graceful=True)
    assert [list(s)[-1].output.tokens for s in streams] == _alone(eng, reqs)
    with pytest.raises(EngineClosedError):
        seng.generate(*reqs[0][:1], **reqs[0][1])

    seng = SyncEngine(eng, max_batch_size=1)
    _slow_step(seng, 0.05)
    streams = [seng.stream(ids, **opts) for ids, opts in reqs]
    seng.close(graceful=False)
    errors = []
    for s in streams:
        try:
            list(s)
        except EngineClosedError as e:
            errors.append(e)
    assert len(errors) >= len(reqs) - 1   # all but perhaps one that finished first


def test_failed_step_fails_its_requests_only(engines):
    eng, _ = engines["llada"]
    ids, opts = varied_requests(eng.cfg, 1, seed=2)[0]
    with SyncEngine(eng) as seng:
        step = seng.scheduler.batcher.step
        calls = []

        def broken(rows):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("injected failure")
            return step(rows)
        seng.scheduler.batcher.step = broken
        with pytest.raises(RuntimeError, match="injected failure"):
            seng.generate(ids, **opts)
        assert seng.generate(ids, **opts).tokens == eng.generate(ids[None], **opts).answers[0].tolist()


def test_metrics_text(engines):
    eng, _ = engines["llada"]
    reqs = varied_requests(eng.cfg, 3, seed=4)
    with SyncEngine(eng) as seng:
        for ids, opts in reqs:
            seng.generate(ids, **opts)
        text = seng.prometheus()
    for name in ("illada_requests_total 3", "illada_generated_tokens_total", "illada_queue_depth 0",
                 "illada_batch_size_bucket", "illada_tokens_per_second", "illada_requests_cancelled_total 0"):
        assert name in text


def test_cancelled_before_admission_fails_cleanly(engines):
    eng, _ = engines["llada"]
    ids, opts = varied_requests(eng.cfg, 1, seed=6)[0]
    with SyncEngine(eng, max_batch_size=1) as seng:
        _slow_step(seng, 0.02)
        busy = seng.stream(ids, **opts)
        waiting = seng.stream(ids, **opts)
        waiting.close()
        # the scheduler drops it from the queue and reports that to the request's sink
        assert isinstance(waiting._events.get(timeout=30), RequestCancelledError)
        assert list(busy)[-1].output.tokens == eng.generate(ids[None], **opts).answers[0].tolist()


def test_errors_after_a_step_fail_that_request_only(engines):
    eng, _ = engines["llada"]
    ids, opts = varied_requests(eng.cfg, 1, seed=12)[0]
    with SyncEngine(eng) as seng:
        decode = seng.scheduler._decode
        seng.scheduler._decode = lambda stops: (lambda answers: 1 / 0)   # a broken tokenizer, say
        with pytest.raises(ZeroDivisionError):
            seng.generate(ids, **opts)
        seng.scheduler._decode = decode
        assert seng.generate(ids, **opts).tokens == eng.generate(ids[None], **opts).answers[0].tolist()


def test_a_crashed_scheduler_fails_everything_and_refuses_more(engines):
    eng, _ = engines["llada"]
    ids, opts = varied_requests(eng.cfg, 1, seed=13)[0]
    seng = SyncEngine(eng)
    _slow_step(seng, 0.02)
    sched = seng.scheduler
    admit = sched._admit

    def broken_admit():   # an internal error outside any request's work, once both requests are in
        if len(sched._queue) + len(sched._rows) >= 2:
            raise ZeroDivisionError("broken admission")
        return admit()

    running = seng.stream(ids, **opts)
    sched._admit = broken_admit
    waiting = seng.stream(ids, **opts)   # submit never fails here: the crash needs this request queued
    for events in (running, waiting):
        with pytest.raises(RuntimeError, match="scheduler stopped after an internal error"):
            list(events)
    with pytest.raises(EngineClosedError, match="internal error"):
        seng.stream(ids, **opts)
    seng.close()


def test_cancelled_and_expired_requests_leave_the_queue_from_anywhere(engines):
    eng, _ = engines["llada"]
    ids, opts = varied_requests(eng.cfg, 1, seed=14)[0]
    opts = dict(opts, gen_length=16, block_length=4, steps=16)
    with SyncEngine(eng, max_batch_size=1, max_queue=3) as seng:
        _slow_step(seng, 0.02)
        running = seng.stream(ids, **opts)
        live = seng.stream(ids, **opts)               # the head of the queue, waiting its turn
        for _ in range(20):                          # far more than the bound, each cancelled at once
            seng.stream(ids, **opts).close()
        expiring = seng.stream(ids, timeout=0.05, **opts)
        t0 = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            list(expiring)
        assert time.monotonic() - t0 < 0.25 * 16    # long before the live head would have finished
        assert seng.scheduler.queue_depth <= 1
        assert list(live)[-1].output.tokens == list(running)[-1].output.tokens


def test_cache_request_without_a_seed_reports_the_seed_it_used(engines):
    eng, _ = engines["llada"]
    ids, opts = varied_requests(eng.cfg, 1, seed=15)[0]
    opts = dict(opts, gen_length=16, block_length=8, steps=16, temperature=0.9)
    del opts["seed"]
    with SyncEngine(eng) as seng:
        out = seng.generate(ids, cache="prefix", **opts)
    again = eng.generate(ids[None], cache="prefix", seed=out.seed, **opts)
    assert out.tokens == again.answers[0].tolist()


def _slow_forward(eng, delay):
    """Make every model forward of `eng` take at least `delay` seconds; returns the undo."""
    logits = eng.model.logits

    def slow(*a, **kw):
        time.sleep(delay)
        return logits(*a, **kw)
    eng.model.logits = slow
    return lambda: delattr(eng.model, "logits")


def test_abort_cancels_requests_running_outside_the_batch(engines):
    eng, _ = engines["llada"]
    ids, opts = varied_requests(eng.cfg, 1, seed=16)[0]
    opts = dict(opts, gen_length=32, block_length=4, steps=32)
    seng = SyncEngine(eng)
    undo = _slow_forward(eng, 0.02)
    try:
        events = seng.stream(ids, cache="dual", **opts)
        assert next(events).kind == "block"
        t0 = time.monotonic()
        seng.close(graceful=False)
        assert time.monotonic() - t0 < 0.02 * 28     # it did not run to the end
        with pytest.raises(RequestCancelledError):
            list(events)
    finally:
        undo()


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("settings", [dict(cache="prefix"), dict(cache="dual", temperature=0.8),
                                      dict(cache="prefix", remasking="random", stop_at_eos=True),
                                      dict(cache="dual", threshold=0.05),
                                      dict(cache="prefix", threshold=0.05, temperature=0.5)],
                         ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_cache_requests_run_in_cohorts_with_their_alone_tokens(engines, layout, settings):
    eng, _ = engines[layout]
    g = torch.Generator().manual_seed(len(settings))
    reqs = []
    for i in range(5):
        ids = random_prompt(eng.cfg, 1, int(torch.randint(2, 11, (1,), generator=g)), seed=40 + i)[0]
        reqs.append((ids, dict(gen_length=16, block_length=8, steps=16, seed=7 * i, **settings)))
    if settings.get("stop_at_eos"):
        stop = eng.generate(reqs[0][0][None], **dict(reqs[0][1], stop_at_eos=False)).answers[0, 3]
        reqs = [(ids, dict(opts, stop_token_ids=[int(stop)])) for ids, opts in reqs]
    with SyncEngine(eng, max_batch_size=3) as seng:
        undo = _slow_forward(eng, 0.005)         # the requests queue up while the first cohort runs
        try:
            streams = [seng.stream(ids, **opts) for ids, opts in reqs]
            outs = [list(s)[-1].output for s in streams]
        finally:
            undo()
        stats = seng.stats()
    for out, (ids, opts) in zip(outs, reqs):
        alone = eng.generate(ids[None], **opts)
        assert out.tokens == alone.answers[0].tolist()
        assert out.answer_length == int(alone.answer_lengths[0]) and out.seed == opts["seed"]
    cohorts = settings.get("threshold") is None or "temperature" not in settings
    assert (max(stats["batch_sizes"]) > 1) == cohorts   # shared a batch exactly where that is exact


def _serving_sources():
    import os

    import illada_rt.serving
    root = os.path.dirname(illada_rt.serving.__file__)
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


def test_serving_uses_the_protocol_members_of_an_engine_and_no_others(engines):
    """Every `engine.X` / `self.engine.X` in illada_rt/serving names a ServingEngine member, and
    every member is used; an Engine satisfies the protocol."""
    import ast

    members = set(ServingEngine.__annotations__) | {
        name for name, value in vars(ServingEngine).items() if callable(value) and not name.startswith("_")}
    used = set()
    for path in _serving_sources():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                owner = node.value
                if (isinstance(owner, ast.Name) and owner.id == "engine") or \
                        (isinstance(owner, ast.Attribute) and owner.attr == "engine"):
                    used.add(node.attr)
    assert used == members, (sorted(used - members), sorted(members - used))
    assert isinstance(engines["llada"][0], ServingEngine)


def test_requests_are_typed_by_their_kind_of_work(engines):
    eng, _ = engines["llada"]
    ids, opts = varied_requests(eng.cfg, 1, seed=16)[0]
    noop = (lambda item: None)
    assert type(generation_request(eng, ids, opts, noop, noop, False, None)) is RowRequest
    cached = generation_request(eng, ids, dict(opts, cache="prefix"), noop, noop, False, None)
    assert type(cached) is CohortRequest and cached.key is not None
    alone = generation_request(eng, ids, dict(opts, cache="dual", threshold=0.1, temperature=0.5), noop, noop,
                               False, None)
    assert type(alone) is CohortRequest and alone.key is None            # random threshold decoding: alone
    masked = ids.clone()
    masked[0] = eng.cfg.mask_token_id
    assert type(infill_request(eng, masked, dict(steps=1), noop, noop, None)) is InfillRequest


@pytest.mark.parametrize("cache", [None, "prefix"])
def test_serving_events_are_stream_events_with_their_forward_counts(engines, cache):
    eng, _ = engines["llada"]
    ids, opts = varied_requests(eng.cfg, 1, seed=17)[0]
    opts = dict(opts, gen_length=16, block_length=8, steps=8, cache=cache)
    with SyncEngine(eng) as seng:
        events = list(seng.stream(ids, every_step=True, **opts))
        filled = seng.infill(torch.cat([ids, torch.tensor([eng.cfg.mask_token_id] * 2)]), steps=2)
    assert RequestEvent is StreamEvent and all(type(e) is StreamEvent for e in events)
    steps = [e for e in events if e.kind == "step"]
    blocks = [e for e in events if e.kind == "block"]
    done = events[-1]
    assert [e.nfe for e in steps] == list(range(1, done.output.nfe + 1))
    assert [e.nfe for e in blocks] == [4, 8] and done.nfe == done.output.nfe == 8
    assert all(isinstance(e.tokens, list) for e in events) and done.new_tokens == done.tokens
    assert filled.nfe == 2
