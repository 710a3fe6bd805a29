"""The device-only denoising step (graph_step.py) run eagerly on the CPU, step after step by the
host loop (graph_loop.py), against the eager denoising loop (denoise.py), token for token.

This is what a CUDA graph replays; test_cuda_engine.py compares the replay itself on a GPU.
The step is also checked to be one fixed program: the same torch ops on the same shapes at every
step of every block, and none of them reading a value back to the host.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import random_prompt
from test_cache import padded_prompt
from illada_rt import graph_loop
from illada_rt.cuda_graphs import GraphCache
from illada_rt.denoise import DenoiseSettings, denoise
from illada_rt.graph_loop import run_steps, steps_per_full_block
from illada_rt.graph_step import StepState, denoise_step

KW = dict(steps=8, gen_length=16, block_length=8)
OPTIONS = [
    dict(), dict(temperature=0.8), dict(remasking="random"), dict(remasking="random", temperature=0.5),
    dict(cfg_scale=1.0), dict(cfg_scale=0.5, temperature=0.7), dict(threshold=0.6), dict(threshold=0.05),
    dict(threshold=0.3, cfg_scale=1.0, temperature=0.6),
]




def eager(eng, job):
    """(canvas, nfe) of the eager loop on a copy of the job's canvas."""
    canvas = job.canvas.clone()
    nfe = denoise(eng.model, canvas, job.key_mask, job.blocks, job.prompt_len, job.seeds, job.row_offset, job.settings)
    return canvas, nfe


def new_state(eng, job):
    B, L = job.canvas.shape
    return StepState(eng.model, B, L, job.block_length, job.key_mask is not None, job.settings)


def graph_step(eng, job, noop_is_cheap=False, st=None):
    """(canvas, nfe, state) of the graph step run eagerly by the host loop."""
    st = new_state(eng, job) if st is None else st
    st.load(job.canvas, job.key_mask, job.seeds, job.row_offset, job.prompt_len)
    nfe = run_steps(st, lambda: denoise_step(st), job.prompt_len, job.canvas.shape[1] - job.prompt_len,
                    job.settings.stop_token_ids, job.settings.fill_id, noop_is_cheap=noop_is_cheap)
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
    assert not GraphCache.supports(job.settings)
    assert GraphCache.supports(eng.plan_generation(random_prompt(eng.cfg, 1, 4, seed=0), None, **KW, threshold=0.5).settings)
    assert not GraphCache.supports(DenoiseSettings(steps_per_block=4, cache="dual"))
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
    st.load(job.canvas, job.key_mask, job.seeds, job.row_offset, job.prompt_len)
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
    assert eng.use_cuda_graphs and eng._graphs is None  # graphs are a CUDA matter


class FakeGraph:
    """Stands in for a captured CUDA graph on the CPU: replay runs the step eagerly."""

    def __init__(self, st):
        self.st, self.replays = st, 0

    def replay(self):
        self.replays += 1
        denoise_step(self.st)


def test_graph_cache_bookkeeping(engines, monkeypatch):
    """GraphCache on the CPU with capture faked: one capture per shape, reuse, the fallback from
    IF nodes to plain graphs, and the eager loop where the graph step does not apply."""
    from illada_rt import Engine, cuda_graphs
    captures = []

    def fake_capture(st, pool, conditional):
        captures.append(conditional)
        if conditional:
            raise RuntimeError("CUDA Graphs conditional nodes are not supported")  # as torch says it
        return FakeGraph(st)
    monkeypatch.setattr(cuda_graphs, "capture_step", fake_capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: (0, 1))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)

    model = engines["illada"][0].model
    eager, graphed = Engine(model, use_cuda_graphs=False), Engine(model)
    graphed._graphs = GraphCache(model)
    ids, mask = padded_prompt(model.cfg)
    for options in (dict(), dict(), dict(threshold=0.1), dict(cache="dual"), dict(threshold=0.5, stop_at_eos=True),
                    dict(stop_at_eos=True)):
        want, got = (e.generate(ids, mask, **KW, seed=5, **options) for e in (eager, graphed))
        assert torch.equal(got.sequences, want.sequences) and got.nfe == want.nfe
    # IF node refused once, then plain graphs only; early stop reuses the graph (stop ids are host-side)
    assert captures == [True, False, False]
    assert len(graphed._graphs.steps) == 2 and not graphed._graphs.conditional
    assert all(not s.conditional for s in graphed._graphs.steps.values())
    graphed._graphs.max_graphs = 1
    graphed.generate(ids, **KW, seed=5)
    assert len(graphed._graphs.steps) == 1
