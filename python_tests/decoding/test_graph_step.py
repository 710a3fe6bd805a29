"""The device-only denoising step (graph_step.py) run eagerly on the CPU, step after step by the
host loop (graph_loop.py), against the eager denoising loop (denoise.py), token for token.

This is what a CUDA graph replays; test_cuda_engine.py compares the replay itself on a GPU.
The step is also checked to be one fixed program: the same torch ops on the same shapes at every
step of every block, and none of them reading a value back to the host.
"""
import contextlib
import dataclasses
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from prompts import padded_prompt, random_prompt
from illada_rt.decoding.graph import capture as cuda_graphs, replay as graph_loop
from illada_rt.decoding.graph.capture import StepGraphs
from illada_rt.decoding.loop import denoise
from illada_rt.decoding.plan import DenoiseSettings
from illada_rt.decoding.runner import graph_step_runs
from illada_rt.decoding.graph.replay import run_steps, steps_per_full_block
from illada_rt.decoding.graph.state import StepState, denoise_step, graph_key

KW = dict(steps=8, gen_length=16, block_length=8)
OPTIONS = [
    dict(), dict(temperature=0.8), dict(remasking="random"), dict(remasking="random", temperature=0.5),
    dict(cfg_scale=1.0), dict(cfg_scale=0.5, temperature=0.7), dict(threshold=0.6), dict(threshold=0.05),
    dict(threshold=0.3, cfg_scale=1.0, temperature=0.6),
]




def eager(eng, job):
    """(canvas, nfe) of the eager loop on a copy of the job's canvas."""
    copy = dataclasses.replace(job, canvas=job.canvas.clone())
    nfe = denoise(eng.model, copy)
    return copy.canvas, nfe


def new_state(eng, job):
    return StepState.for_plan(eng.model, job)


def graph_step(eng, job, noop_is_cheap=False, st=None):
    """(canvas, nfe, state) of the graph step run eagerly by the host loop."""
    st = new_state(eng, job) if st is None else st
    st.load(job)
    nfe = run_steps(st, lambda: denoise_step(st), job, noop_is_cheap=noop_is_cheap)
    return st.canvas.clone(), nfe, st


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("with_mask", [False, True])
def test_graph_step_matches_eager_loop(engines, layout, options, with_mask):
    eng = engines[layout][0]
    ids, mask = padded_prompt(eng.cfg) if with_mask else (random_prompt(eng.cfg, 2, 6, seed=7), None)
    job = eng.plan_generation(ids, mask, **KW, seed=11, **options)
    want, want_nfe = eager(eng, job)
    assert not bool((want[:, job.prompt_len:] == eng.cfg.mask_token_id).any())
    for cheap in (False, True):  # rounds with reads, or the whole bound of replays without any
        got, nfe, _ = graph_step(eng, job, noop_is_cheap=cheap)
        assert torch.equal(got, want), (options, cheap)
        assert nfe == want_nfe


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("steps,gen_length,block_length", [(16, 16, 4), (32, 16, 8), (6, 12, 12), (10, 10, 5),
                                                           (24, 12, 6), (3, 9, 3)])
def test_schedule_grid_matches_eager_loop(engines, layout, steps, gen_length, block_length):
    """Including steps_per_block > block_length, where the schedule has zero-transfer steps."""
    eng = engines[layout][0]
    ids, mask = padded_prompt(eng.cfg, batch=2, length=5 + steps % 7, seed=steps + gen_length)
    for options in (dict(), dict(temperature=1.0, cfg_scale=0.5), dict(threshold=0.2)):
        job = eng.plan_generation(ids, mask, steps=steps, gen_length=gen_length, block_length=block_length, seed=1,
                           **options)
        want, want_nfe = eager(eng, job)
        got, nfe, _ = graph_step(eng, job)
        assert torch.equal(got, want) and nfe == want_nfe, options


def test_steps_per_full_block():
    assert steps_per_full_block(8, 8) == 8 and steps_per_full_block(8, 32) == 8
    assert steps_per_full_block(8, 3) == 3 and steps_per_full_block(1, 4) == 1


@pytest.mark.parametrize("layout", ["llada", "illada"])
def test_early_stop_matches_eager_loop(engines, layout):
    eng = engines[layout][0]
    ids, mask = padded_prompt(eng.cfg)
    kw = dict(steps=16, gen_length=32, block_length=8, seed=0)
    plain, _ = eager(eng, eng.plan_generation(ids, mask, **kw))
    P = ids.shape[1]
    for stop in (int(plain[0, P + 3]), int(plain[1, P + 12])):  # stops in block 0 of row 0, block 1 of row 1
        job = eng.plan_generation(ids, mask, stop_at_eos=True, stop_token_ids=[stop], **kw)
        want, want_nfe = eager(eng, job)
        got, nfe, _ = graph_step(eng, job)
        assert torch.equal(got, want) and nfe == want_nfe
    # every row stops in the first block: the generation ends there
    job = eng.plan_generation(ids, mask, stop_at_eos=True, stop_token_ids=plain[:, P:P + 8].flatten().tolist(), **kw)
    want, want_nfe = eager(eng, job)
    got, nfe, _ = graph_step(eng, job)
    assert torch.equal(got, want) and nfe == want_nfe == steps_per_full_block(8, 4)


def test_threshold_with_early_stop_is_left_to_the_eager_loop(engines):
    eng = engines["llada"][0]
    job = eng.plan_generation(random_prompt(eng.cfg, 1, 4, seed=0), None, **KW, threshold=0.5, stop_at_eos=True,
                       stop_token_ids=[3])
    assert not graph_step_runs(job)
    assert graph_step_runs(eng.plan_generation(random_prompt(eng.cfg, 1, 4, seed=0), None, **KW, threshold=0.5))
    assert not graph_step_runs(dataclasses.replace(job, settings=DenoiseSettings(steps_per_block=4, cache="dual")))
    with pytest.raises(ValueError, match="without stop tokens"):
        graph_step(eng, job)
    with pytest.raises(ValueError, match="exact mode"):
        StepState(eng.model, 1, 20, 8, False, DenoiseSettings(steps_per_block=4, cache="prefix"))


@pytest.mark.parametrize("options", [dict(), dict(threshold=0.05, cfg_scale=1.0)])
def test_surplus_steps_are_no_ops(engines, options):
    """Past the last block a step changes neither tokens nor the RNG counter."""
    eng = engines["illada"][0]
    ids, mask = padded_prompt(eng.cfg)
    job = eng.plan_generation(ids, mask, **KW, seed=2, temperature=0.9, **options)
    got, nfe, st = graph_step(eng, job)
    for _ in range(3):
        denoise_step(st)
    assert torch.equal(st.canvas, got) and st.nfe.tolist() == [nfe] * 3
    assert int(st.block_start) == job.canvas.shape[1] - job.block_length


def test_threshold_reads_the_device_at_most_once_per_block(engines, monkeypatch):
    eng = engines["llada"][0]
    reads = []
    real = graph_loop._progress
    monkeypatch.setattr(graph_loop, "_progress", lambda st: reads.append(1) or real(st))
    ids = random_prompt(eng.cfg, 2, 4, seed=1)
    for threshold in (0.05, 0.9):
        job = eng.plan_generation(ids, None, steps=16, gen_length=32, block_length=8, threshold=threshold, seed=0)
        want, want_nfe = eager(eng, job)
        reads.clear()
        got, nfe, _ = graph_step(eng, job)
        assert torch.equal(got, want) and nfe == want_nfe
        assert 1 <= len(reads) <= 4
        reads.clear()
        got, nfe, _ = graph_step(eng, job, noop_is_cheap=True)
        assert torch.equal(got, want) and nfe == want_nfe and not reads


def test_state_is_reusable_across_generations(engines):
    """A cached state serves new prompts, prompt lengths and seeds of the same total length:
    load resets everything but the constant arange, whatever the buffers held (here: garbage)."""
    eng = engines["illada"][0]
    kw = dict(steps=8, gen_length=16, block_length=8, temperature=0.7, cfg_scale=0.5)
    first = eng.plan_generation(*padded_prompt(eng.cfg, length=7, seed=1), **kw, seed=3)
    st = new_state(eng, first)
    for name, t in vars(st).items():
        if isinstance(t, torch.Tensor) and t.dtype == torch.int64 and name != "arange_block":
            t.fill_(-7)
    for job in (first, eng.plan_generation(*padded_prompt(eng.cfg, length=7, seed=2), **kw, seed=4),
                eng.plan_generation(random_prompt(eng.cfg, 3, 7, seed=5), torch.ones(3, 7, dtype=torch.int64), **kw, seed=5)):
        want, want_nfe = eager(eng, job)
        got, nfe, _ = graph_step(eng, job, st=st)
        assert torch.equal(got, want) and nfe == want_nfe


class OpLog(TorchDispatchMode):
    """Records (op, output shapes) of every torch op."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = tuple(tuple(t.shape) for t in (out if isinstance(out, (tuple, list)) else [out])
                       if isinstance(t, torch.Tensor))
        self.ops.append((str(func), shapes))
        return out


@pytest.mark.parametrize("options", [dict(), dict(cfg_scale=1.0), dict(threshold=0.3)])
def test_every_step_is_the_same_program_without_host_reads(engines, options):
    """What a single captured graph needs: identical ops and shapes at every step of every block,
    and no op that hands a device value to the host (item, nonzero, is_nonzero)."""
    eng = engines["illada"][0]
    ids, mask = padded_prompt(eng.cfg)
    job = eng.plan_generation(ids, mask, steps=9, gen_length=12, block_length=4, seed=0, **options)
    st = new_state(eng, job)
    st.load(job)
    programs = []
    for _ in range(9):
        with OpLog() as log:
            denoise_step(st)
        programs.append(log.ops)
    assert int(st.blocks_done) >= 2  # the steps crossed blocks
    assert all(p == programs[0] for p in programs)
    names = {name for name, _ in programs[0]}
    assert not {n for n in names if any(bad in n for bad in ("_local_scalar_dense", "nonzero", "item"))}
    assert any("index_select" in n for n in names)


def test_cpu_engine_runs_eagerly(engines):
    eng = engines["llada"][0]
    assert eng.use_cuda_graphs and eng.runner.graphs is None  # graphs are a CUDA matter


# ---------------------------------------------------------------- capture (cuda_graphs.py) with torch.cuda faked
#
# FakeCuda stands in for torch.cuda's streams and graphs on the CPU, as torch behaves: the graph
# context makes its stream current and restores the caller's only when capture_end succeeds;
# begin_capture_to_if_node makes a child stream current and only end_capture_to_conditional_node
# restores the capture stream. It logs what capture does: ("capture_begin", stream), "if_begin",
# "if_end", "capture_end". The captured ops run eagerly on the CPU (nothing is recorded).


class FakeStream:
    def __init__(self, name):
        self.name = name

    def wait_stream(self, other):
        pass

    def __repr__(self):
        return f"FakeStream({self.name})"


class FakeCuda:
    def __init__(self, monkeypatch, if_nodes=True, cuda_version="12.8", fail_capture_end=False,
                 fail_in_if_node=0, fail_if_end=False):
        """fail_capture_end: capture_end raises (as for an invalidated capture). fail_in_if_node: the
        first n step bodies captured inside an IF node raise RuntimeError (as a CUDA error would).
        fail_if_end: end_capture_to_conditional_node raises before it restores the capture stream; as
        torch's stream guard does, the graph makes that stream current again when it is freed."""
        self.log, self.made = [], []
        self.caller = self.current = FakeStream("caller")
        self.fail_capture_end, self.fail_in_if_node = fail_capture_end, fail_in_if_node
        self.fail_if_end = fail_if_end
        self.default_capture_stream = FakeStream("torch.cuda.graph's default")
        fake = self

        class Graph:
            def replay(self):
                fake.log.append("replay")

        class GraphWithIfNodes(Graph):
            def begin_capture_to_if_node(self, pred):
                assert pred.dtype == torch.bool and pred.dim() == 0
                fake.log.append("if_begin")
                self.outer, fake.current = fake.current, FakeStream("if-node child")

            def end_capture_to_conditional_node(self):
                fake.log.append("if_end")
                if fake.fail_if_end:
                    raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
                fake.current = self.outer
                del self.outer

            def __del__(self):
                if hasattr(self, "outer"):   # the IF node's guard, never released
                    fake.log.append("guard_restores_capture_stream")
                    fake.current = self.outer

        class GraphContext:
            def __init__(self, graph, pool=None, stream=None):
                self.stream = stream if stream is not None else fake.default_capture_stream

            def __enter__(self):
                self.before, fake.current = fake.current, self.stream
                fake.log.append(("capture_begin", self.stream))

            def __exit__(self, *exc):
                fake.log.append("capture_end")
                if fake.fail_capture_end:
                    raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
                fake.current = self.before   # torch restores the stream after a capture_end that worked

        @contextlib.contextmanager
        def stream_context(stream):
            before, fake.current = fake.current, stream
            yield
            fake.current = before

        def new_stream(device=None):
            fake.made.append(FakeStream(f"made #{len(fake.made)}"))
            return fake.made[-1]

        def step_body(st):
            if fake.current.name == "if-node child" and fake.fail_in_if_node:
                fake.fail_in_if_node -= 1
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
            real_step_body(st)

        real_step_body = cuda_graphs.step_body
        monkeypatch.setattr(cuda_graphs, "step_body", step_body)
        monkeypatch.setattr(torch.cuda, "CUDAGraph", GraphWithIfNodes if if_nodes else Graph)
        monkeypatch.setattr(torch.cuda, "graph", GraphContext)
        monkeypatch.setattr(torch.cuda, "stream", stream_context)
        monkeypatch.setattr(torch.cuda, "Stream", new_stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: fake.current)
        monkeypatch.setattr(torch.cuda, "set_stream", lambda stream: setattr(fake, "current", stream))
        monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: (0, 1))
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(torch.version, "cuda", cuda_version)
        monkeypatch.setattr(torch.version, "hip", None)

    def captures(self):
        """The streams of the captures begun, in order."""
        return [entry[1] for entry in self.log if isinstance(entry, tuple) and entry[0] == "capture_begin"]


def capture(cache, eng, seed=0, **options):
    """StepGraphs._get for a job of the padded prompt: the CapturedStep of its shape."""
    return cache._get(eng.plan_generation(*padded_prompt(eng.cfg), **KW, seed=seed, **options))


def test_probe_finds_no_if_nodes_and_the_cache_never_tries_them(engines, monkeypatch):
    """A torch without the IF-node methods (2.11): named in a reason, one warning, plain captures only."""
    eng = engines["illada"][0]
    fake = FakeCuda(monkeypatch, if_nodes=False)
    why = cuda_graphs.conditional_nodes_unavailable()
    assert why is not None and "has no CUDAGraph.begin_capture_to_if_node" in why
    with pytest.warns(RuntimeWarning, match="without conditional nodes.*begin_capture_to_if_node"):
        cache = StepGraphs(eng.model)
    assert not cache.conditional and cache.why_plain == why
    step = capture(cache, eng)
    assert fake.captures() == [fake.made[0]] and "if_begin" not in fake.log   # never attempted
    assert not step.conditional and step.why_plain == why and step.path == f"plain ({why})"
    with pytest.raises(RuntimeError, match="conditional nodes were required, but .*begin_capture_to_if_node"):
        StepGraphs(eng.model, conditional=True)


def test_probe_reads_the_cuda_build(engines, monkeypatch):
    FakeCuda(monkeypatch, cuda_version="12.2")
    assert "CUDA 12.2 (conditional nodes need CUDA >= 12.4)" in cuda_graphs.conditional_nodes_unavailable()
    FakeCuda(monkeypatch, cuda_version=None)
    assert "built without CUDA" in cuda_graphs.conditional_nodes_unavailable()
    for version in ("12.4", "13.0"):
        FakeCuda(monkeypatch, cuda_version=version)
        assert cuda_graphs.conditional_nodes_unavailable() is None


def test_conditional_capture_says_so(engines, monkeypatch):
    eng = engines["illada"][0]
    fake = FakeCuda(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the feature is there: nothing to warn about
        cache = StepGraphs(eng.model)
        step = capture(cache, eng)
    assert fake.log[-4:] == [("capture_begin", fake.made[0]), "if_begin", "if_end", "capture_end"]
    assert step.conditional and step.why_plain is None and step.path.startswith("conditional")
    assert fake.current is fake.caller
    off = StepGraphs(eng.model, conditional=False)
    step = capture(off, eng)
    assert not step.conditional and step.path == "plain (conditional nodes turned off (StepGraphs(conditional=False)))"
    assert fake.log[-2:] == [("capture_begin", fake.made[1]), "capture_end"]


def test_an_error_inside_the_if_node_still_ends_it(engines, monkeypatch):
    """The body raises between begin and end of the IF node: the end still runs (so the capture stream
    is current again when the outer capture ends), the error turns IF nodes off, and the plain retry
    runs on a fresh stream."""
    eng = engines["illada"][0]
    fake = FakeCuda(monkeypatch, fail_in_if_node=1)
    cache = StepGraphs(eng.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = capture(cache, eng)
    assert [e if isinstance(e, str) else e[0] for e in fake.log] == [
        "capture_begin", "if_begin", "if_end", "capture_end", "capture_begin", "capture_end"]
    assert fake.captures() == fake.made and len(fake.made) == 2
    assert [str(w.message) for w in caught if "without conditional nodes" in str(w.message)]
    assert not step.conditional and not cache.conditional
    assert step.path == "plain (the capture with a conditional node failed: CUDA error: operation not permitted " \
                        "when stream is capturing)"
    assert fake.current is fake.caller


def test_a_failed_if_node_end_leaves_no_stream_behind(engines, monkeypatch):
    """end_capture_to_conditional_node raising leaves torch's stream guard in the failed graph, which
    makes that capture's stream current once the graph is freed: the cache frees it before it goes on,
    so the plain retry and everything after run from the caller's stream."""
    eng = engines["illada"][0]
    fake = FakeCuda(monkeypatch, fail_in_if_node=1, fail_if_end=True)
    cache = StepGraphs(eng.model)
    with pytest.warns(RuntimeWarning, match="conditional node failed: CUDA error: operation failed"):
        step = capture(cache, eng)
    assert "guard_restores_capture_stream" in fake.log
    assert fake.log.index("guard_restores_capture_stream") < fake.log.index(("capture_begin", fake.made[1]))
    assert fake.current is fake.caller and not step.conditional


def test_an_error_inside_the_if_node_is_raised_when_if_nodes_are_required(engines, monkeypatch):
    eng = engines["illada"][0]
    fake = FakeCuda(monkeypatch, fail_in_if_node=1)
    with pytest.raises(RuntimeError, match="conditional node failed .*operation not permitted"):
        capture(StepGraphs(eng.model, conditional=True), eng)
    assert fake.log == [("capture_begin", fake.made[0]), "if_begin", "if_end", "capture_end"]
    assert fake.current is fake.caller


def test_each_attempt_after_a_failure_has_its_own_stream(engines, monkeypatch):
    """Captures share one stream while they succeed (the pool reuses freed blocks per stream); a failed
    one may leave its stream capturing, so the next attempt makes a new one; the caller's stream is
    current again even where capture_end raised (torch.cuda.graph then leaves its own stream current)."""
    eng = engines["illada"][0]
    fake = FakeCuda(monkeypatch)
    cache = StepGraphs(eng.model)
    capture(cache, eng)
    capture(cache, eng, temperature=0.5)                 # another key: a second graph
    assert len(cache.steps) == 2 and fake.captures() == [fake.made[0]] * 2
    fake.fail_capture_end = True
    with pytest.warns(RuntimeWarning, match="conditional node failed"), \
            pytest.raises(RuntimeError, match="capture of the denoising step failed.*use_cuda_graphs=False"):
        capture(cache, eng, cfg_scale=1.0)
    assert fake.captures()[2:] == [fake.made[0], fake.made[1]]   # the failed stream is not reused
    assert fake.current is fake.caller and cache.stream is None
    fake.fail_capture_end = False
    step = capture(cache, eng, cfg_scale=1.0)
    assert fake.captures()[4:] == [fake.made[2]] and not step.conditional
    assert len(set(map(id, fake.made))) == 3


class FakeGraph:
    """Stands in for a captured CUDA graph on the CPU: replay runs the step eagerly."""

    def __init__(self, st):
        self.st, self.replays = st, 0

    def replay(self):
        self.replays += 1
        denoise_step(self.st)


def test_graph_cache_bookkeeping(engines, monkeypatch):
    """StepGraphs on the CPU with capture faked: one capture per shape, reuse, the fallback from
    IF nodes to plain graphs, and the eager loop where the graph step does not apply."""
    from illada_rt import Engine
    captures = []

    def fake_capture(st, pool, stream, conditional):
        captures.append(conditional)
        if conditional:
            raise RuntimeError("CUDA Graphs conditional nodes are not supported")  # as torch says it
        return FakeGraph(st)
    FakeCuda(monkeypatch)   # a torch with IF nodes: the cache tries them first
    monkeypatch.setattr(cuda_graphs, "capture_step", fake_capture)

    model = engines["illada"][0].model
    eager, graphed = Engine(model, use_cuda_graphs=False), Engine(model)
    graphed.runner.graphs = StepGraphs(model)
    assert graphed.runner.graphs.conditional
    ids, mask = padded_prompt(model.cfg)
    with pytest.warns(RuntimeWarning, match="conditional nodes are not supported"):
        for options in (dict(), dict(), dict(threshold=0.1), dict(cache="dual"),
                        dict(threshold=0.5, stop_at_eos=True), dict(stop_at_eos=True)):
            want, got = (e.generate(ids, mask, **KW, seed=5, **options) for e in (eager, graphed))
            assert torch.equal(got.sequences, want.sequences) and got.nfe == want.nfe
    # IF node refused once, then plain graphs only; early stop reuses the graph (stop ids are host-side)
    assert captures == [True, False, False]
    assert len(graphed.runner.graphs.steps) == 2 and not graphed.runner.graphs.conditional
    assert all(not s.conditional and "conditional nodes are not supported" in s.path
               for s in graphed.runner.graphs.steps.values())
    graphed.runner.graphs.max_graphs = 1
    graphed.generate(ids, **KW, seed=5)
    assert len(graphed.runner.graphs.steps) == 1
