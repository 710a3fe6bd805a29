"""The engine on CUDA: Engine.from_pretrained(device="cuda") against the CPU reference, token for
token in float32; bfloat16 against float32; CUDA-graph replay against the eager loop; non-finite
logits. (Device and kernel choice: test_device.py.)

Every test runs once per op implementation (conftest.kernel_impl): the compiled CUDA kernels
("custom") and their torch twins ("torch"), each held to the same reference. The GPU tests
(marker `cuda`) skip without a CUDA device, and the "custom" pass also without a CUDA build of
the extension that can run on the device. Their inputs are made on the device, as a caller
holding device tensors gives them; the CPU reference gets copies. Their checkpoints have
head_dim 64 (d_model 128, 2 heads), since the bfloat16/float16 attention kernels need head_dim
64 or 128. Graph tests print which graph path ran (conditional IF node or plain, and why):
run with -rP to see it. """
import pytest
import torch

from checkpoints import write_checkpoint
from cuda_engines import CUDA_LAYOUTS, cuda_pass, device_prompt
from illada_rt import Engine, ModelConfig, reference
from illada_rt.decoding.graph import capture as cuda_graphs
from illada_rt.decoding.graph.capture import StepGraphs
from illada_rt.loading import load_state_dict

KW = dict(steps=8, gen_length=16, block_length=8)
# bf16 against the float32 reference: top-1 of the logits on a half-masked canvas (near ties are
# the only flips: the test checkpoints spread logits over several units), and the answer tokens,
# which agree less: one flipped token changes the context of every later step of its row. bf16 on
# the CPU measured top-1 0.97-1.00 and answer means 0.71-0.90 (single modes down to 0.29, cfg).
BF16_TOP1_MIN = 0.9
BF16_ANSWER_MIN = 0.5          # mean over the five generation modes: far above chance (1 / vocabulary)
BF16_GRAPH_MIN = 0.9           # bf16 graph replay against bf16 eager: the same kernels, other launches


def padded(cfg, batch=3, length=7, seed=9):
    """(ids, attention_mask) on the GPU: rows 0 and -1 left-padded."""
    ids = device_prompt(cfg, batch, length, seed)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[-1, :1] = 0
    return ids.masked_fill(mask == 0, cfg.pad_token_id), mask


def cpu(t):
    return None if t is None else t.cpu()


@pytest.fixture(scope="module", params=sorted(CUDA_LAYOUTS))
def models(request, tmp_path_factory, kernel_impl):
    """dict(cpu=, cuda=, bf16= engines on this pass's kernels, ref= CPU reference, path=, kernels=, name=)
    for one head_dim-64 layout."""
    kernels = cuda_pass(kernel_impl)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 matmuls in full precision (torch's default)
    path = str(tmp_path_factory.mktemp(f"cuda_{request.param}"))
    write_checkpoint(path, request.param, **CUDA_LAYOUTS[request.param])
    cfg = ModelConfig.from_dir(path)
    assert cfg.head_dim == 64
    out = dict(cpu=Engine.from_pretrained(path, kernels=kernels),
               cuda=Engine.from_pretrained(path, device="cuda", kernels=kernels),
               bf16=Engine.from_pretrained(path, device="cuda", dtype="bfloat16", kernels=kernels),
               ref=reference.ReferenceModel(cfg, load_state_dict(path, cfg)), path=path, kernels=kernels,
               name=f"{request.param}/{kernels}")
    for key in ("cpu", "cuda", "bf16"):
        assert set(out[key].kernels.choice.values()) == {kernels}, (key, out[key].kernels.choice)
    return out


@pytest.mark.cuda
def test_weights_and_tables_live_on_the_device(models):
    m = models["cuda"].model
    assert models["cuda"].device.type == "cuda"
    tensors = [m.wte, m.head, m.ln_f, m.rope_cos, m.rope_sin] + [t for w in m.layers for t in vars(w).values()]
    assert all(t.is_cuda for t in tensors)
    assert models["bf16"].model.wte.dtype == torch.bfloat16 and models["bf16"].model.rope_cos.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.parametrize("with_mask", [False, True])
def test_logits_match_reference(models, with_mask):
    eng = models["cuda"]
    ids, mask = padded(eng.cfg) if with_mask else (device_prompt(eng.cfg, 2, 24, seed=1), None)
    ids[:, -4:] = eng.cfg.mask_token_id
    got = eng.logits(ids, mask)
    assert got.is_cuda and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), models["ref"](ids.cpu(), cpu(mask)), rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("options", [
    dict(), dict(temperature=0.8, seed=3), dict(remasking="random"), dict(remasking="random", temperature=0.5),
    dict(cfg_scale=1.0), dict(cfg_scale=0.5, temperature=0.7), dict(threshold=0.6), dict(threshold=0.5, cfg_scale=1.0),
])
@pytest.mark.parametrize("with_mask", [False, True])
def test_generate_matches_reference(models, options, with_mask):
    """float32 on CUDA (with CUDA graphs, the default) == the CPU reference, token for token."""
    eng = models["cuda"]
    ids, mask = padded(eng.cfg) if with_mask else (device_prompt(eng.cfg, 3, 6, seed=7), None)
    kw = {**KW, "seed": 11, **options}
    out = eng.generate(ids, attention_mask=mask, **kw)
    expected, nfe = reference.generate(models["ref"], ids.cpu(), cpu(mask), mask_id=eng.cfg.mask_token_id, **kw)
    assert out.sequences.device.type == "cpu"
    assert torch.equal(out.sequences, expected), models["name"]
    assert out.nfe == nfe


@pytest.mark.cuda
@pytest.mark.parametrize("steps,gen_length,block_length", [(16, 16, 4), (32, 16, 8), (6, 12, 12), (10, 10, 5)])
def test_generate_grid_matches_reference(models, steps, gen_length, block_length):
    eng = models["cuda"]
    ids = device_prompt(eng.cfg, 2, 5 + steps % 7, seed=steps + gen_length)
    kw = dict(steps=steps, gen_length=gen_length, block_length=block_length, seed=0)
    out = eng.generate(ids, **kw)
    expected, nfe = reference.generate(models["ref"], ids.cpu(), mask_id=eng.cfg.mask_token_id, **kw)
    assert torch.equal(out.sequences, expected) and out.nfe == nfe, models["name"]


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("options", [dict(), dict(threshold=0.5), dict(temperature=0.8, remasking="random")])
def test_cache_modes_match_reference(models, mode, options):
    eng = models["cuda"]
    ids, mask = padded(eng.cfg)
    kw = {**KW, "seed": 0, **options}
    out = eng.generate(ids, mask, cache=mode, **kw)
    expected, nfe = reference.generate_with_cache(models["ref"], ids.cpu(), mask.cpu(), mode=mode,
                                                  mask_id=eng.cfg.mask_token_id, **kw)
    assert torch.equal(out.sequences, expected) and out.nfe == nfe, models["name"]


@pytest.mark.cuda
def test_early_stop_stream_infill_and_scores_match_the_cpu_engine(models):
    cpu_eng, eng = models["cpu"], models["cuda"]
    ids, mask = padded(eng.cfg)
    kw = dict(steps=16, gen_length=32, block_length=8, seed=0)
    stop = int(cpu_eng.generate(ids, mask, **kw).answers[0, 3])
    a, b = (e.generate(ids, mask, stop_at_eos=True, stop_token_ids=[stop], **kw) for e in (cpu_eng, eng))
    assert torch.equal(a.sequences, b.sequences) and a.nfe == b.nfe and torch.equal(a.answer_lengths, b.answer_lengths)

    events = list(eng.stream(ids, mask, every_step=True, **kw))
    blocks = [e for e in events if e.kind == "block"]
    assert all(e.tokens.device.type == "cpu" for e in events)
    assert torch.equal(torch.cat([e.new_tokens for e in blocks], 1), eng.generate(ids, mask, **kw).answers)

    holes = device_prompt(eng.cfg, 2, 14, seed=21)
    holes[0, 2:5] = holes[1, 6:10] = holes[1, 0] = eng.cfg.mask_token_id
    for options in (dict(), dict(threshold=0.5), dict(block_length=2, steps=6, temperature=1.0, seed=5)):
        x, y = (e.infill(holes, **options) for e in (cpu_eng, eng))
        assert torch.equal(x.sequences, y.sequences) and x.nfe == y.nfe and y.sequences.device.type == "cpu"

    prompt, answer = ids[0, 3:].tolist(), ids[1, 1:].tolist()
    for cfg_scale in (0.0, 1.5):
        want = cpu_eng.log_likelihood(prompt, answer, mc_num=8, batch_size=4, cfg_scale=cfg_scale, seed=4)
        got = eng.log_likelihood(prompt, answer, mc_num=8, batch_size=4, cfg_scale=cfg_scale, seed=4)
        assert got == pytest.approx(want, rel=1e-4)
    options = [answer[:3], answer[:5], answer[:1]]
    torch.testing.assert_close(eng.score_choices(prompt, options), cpu_eng.score_choices(prompt, options),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
def test_device_and_host_inputs_give_the_same_answers(models):
    eng = models["cuda"]
    ids, mask = padded(eng.cfg)
    want = eng.generate(ids.cpu(), mask.cpu(), **KW, seed=2)
    got = eng.generate(ids, mask, **KW, seed=2)
    assert torch.equal(want.sequences, got.sequences)
    torch.testing.assert_close(eng.logits(ids), eng.logits(ids.cpu()))


@pytest.mark.cuda
def test_bfloat16_agrees_with_float32(models, record_property):
    """bf16 against the float32 reference, above documented fractions (BF16_TOP1_MIN, BF16_ANSWER_MIN):
    top-1 agreement of the logits, and of the answers of five generation modes. Printed (run with -rP)."""
    eng, ref = models["bf16"], models["ref"]
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = device_prompt(eng.cfg, 4, 64, seed=5)
    ids[torch.rand(ids.shape, generator=g, device="cuda") < 0.5] = eng.cfg.mask_token_id  # a half-denoised canvas
    got = eng.logits(ids)
    assert got.is_cuda and got.dtype == torch.float32 and bool(got.isfinite().all())
    top1 = float((got.argmax(-1).cpu() == ref(ids.cpu()).argmax(-1)).double().mean())

    prompt, mask = padded(eng.cfg)
    answers = {}
    for name, options in (("greedy", {}), ("cfg", dict(cfg_scale=1.0)), ("threshold", dict(threshold=0.6)),
                          ("prefix", dict(cache="prefix")), ("dual", dict(cache="dual"))):
        out = eng.generate(prompt, mask, **KW, seed=0, **options)
        assert not bool((out.answers == eng.cfg.mask_token_id).any())
        cache = options.pop("cache", None)
        args = (ref, prompt.cpu(), mask.cpu())
        want = (reference.generate_with_cache(*args, mode=cache, mask_id=eng.cfg.mask_token_id, **KW, seed=0,
                                              **options) if cache else
                reference.generate(*args, mask_id=eng.cfg.mask_token_id, **KW, seed=0, **options))[0]
        answers[name] = float((out.answers == want[:, prompt.shape[1]:]).double().mean())
    mean_answer = sum(answers.values()) / len(answers)
    record_property("bf16_top1_agreement", top1)
    record_property("bf16_answer_agreement", answers)
    report = (f"[{models['name']}] bf16 vs float32: logits top-1 agreement {top1:.3f} (min {BF16_TOP1_MIN}); "
              f"answer-token agreement mean {mean_answer:.2f} (min {BF16_ANSWER_MIN}): "
              + ", ".join(f"{k} {v:.2f}" for k, v in answers.items()))
    print("\n" + report)
    assert top1 > BF16_TOP1_MIN, report
    assert mean_answer >= BF16_ANSWER_MIN, report


@pytest.mark.cuda
@pytest.mark.parametrize("options", [dict(), dict(threshold=0.9), dict(cfg_scale=1.0)])
def test_non_finite_logits_raise(models, options):
    eng = Engine.from_pretrained(models["path"], device="cuda", kernels=models["kernels"])
    eng.model.head[7].fill_(float("nan"))  # vocabulary entry 7 of every row becomes NaN
    with pytest.raises(RuntimeError, match="non-finite"):
        eng.generate(device_prompt(eng.cfg, 2, 5, seed=0), **KW, **options)


# ---------------------------------------------------------------- CUDA graphs against the eager loop


def graph_path(engine: Engine, models) -> str:
    """The path of the engine's last used captured step, printed (run with -rP) and returned for messages."""
    step = next(reversed(engine.runner.graphs.steps.values()))
    line = f"[{models['name']}] CUDA graph path: {step.path}"
    print("\n" + line)
    return line


@pytest.mark.cuda
@pytest.mark.parametrize("options", [
    dict(), dict(temperature=0.8, seed=3), dict(remasking="random", temperature=0.5), dict(cfg_scale=1.0),
    dict(cfg_scale=0.5, temperature=0.7), dict(threshold=0.6), dict(threshold=0.05), dict(threshold=0.5, cfg_scale=1.0),
    dict(steps=32), dict(stop_at_eos=True, stop_token_ids=[3, 9, 17]),  # not 5: the illada mask id
])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("conditional", [None, False], ids=["auto", "plain"])
def test_graph_replay_matches_eager(models, options, with_mask, conditional, record_property):
    """CUDA-graph replay == the eager loop, token for token: StepGraphs(conditional=None) takes the IF node
    exactly where the probe finds it (else plain, saying why); False always captures plainly."""
    model = models["cuda"].model
    eager = Engine(model, use_cuda_graphs=False)
    graphed = Engine(model)
    graphed.runner.graphs = StepGraphs(model, conditional=conditional)
    ids, mask = padded(model.cfg) if with_mask else (device_prompt(model.cfg, 3, 6, seed=7), None)
    kw = {**KW, "seed": 11, **options}
    want = eager.generate(ids, attention_mask=mask, **kw)
    for _ in range(2):  # the second generation replays the cached graph
        got = graphed.generate(ids, attention_mask=mask, **kw)
        path = graph_path(graphed, models)
        assert torch.equal(got.sequences, want.sequences) and got.nfe == want.nfe, path
    assert len(graphed.runner.graphs.steps) == 1
    step = next(iter(graphed.runner.graphs.steps.values()))
    probe = cuda_graphs.conditional_nodes_unavailable()
    assert step.conditional == (conditional is None and probe is None), (path, probe)
    record_property("cuda_graph_path", step.path)


@pytest.mark.cuda
@pytest.mark.parametrize("options", [dict(), dict(threshold=0.05), dict(cfg_scale=1.0, temperature=0.7)])
def test_graph_replay_with_required_if_nodes(models, options):
    """StepGraphs(conditional=True) where this torch offers IF nodes: the body sits in one, or it raises."""
    why = cuda_graphs.conditional_nodes_unavailable()
    if why is not None:
        pytest.skip(f"no CUDA graph conditional nodes here: {why}")
    model = models["cuda"].model
    eager, graphed = Engine(model, use_cuda_graphs=False), Engine(model)
    graphed.runner.graphs = StepGraphs(model, conditional=True)
    ids, mask = padded(model.cfg)
    want = eager.generate(ids, mask, **KW, seed=4, **options)
    got = graphed.generate(ids, mask, **KW, seed=4, **options)
    path = graph_path(graphed, models)
    assert next(iter(graphed.runner.graphs.steps.values())).conditional, path
    assert torch.equal(got.sequences, want.sequences) and got.nfe == want.nfe, path


@pytest.mark.cuda
def test_graph_cache_is_per_shape(models):
    """Same batch, total and block length share a graph (prompt lengths may differ); padding does not."""
    model = models["cuda"].model
    eager, graphed = Engine(model, use_cuda_graphs=False), Engine(model)
    runs = [(device_prompt(model.cfg, 2, 6, seed=1), None, 16), (device_prompt(model.cfg, 2, 14, seed=2), None, 8),
            (*padded(model.cfg, batch=2, length=6), 16)]
    for ids, mask, gen_length in runs:
        kw = dict(gen_length=gen_length, block_length=8, steps=gen_length, temperature=0.5, seed=0)
        want, got = eager.generate(ids, mask, **kw), graphed.generate(ids, mask, **kw)
        assert torch.equal(got.sequences, want.sequences) and got.nfe == want.nfe
    assert len(graphed.runner.graphs.steps) == 2
    assert len({s.path for s in graphed.runner.graphs.steps.values()}) == 1
    assert Engine(model, use_cuda_graphs=False).runner.graphs is None


@pytest.mark.cuda
def test_graph_replay_bfloat16_agrees_with_eager(models):
    model = models["bf16"].model
    eager, graphed = Engine(model, use_cuda_graphs=False), Engine(model)
    ids, mask = padded(model.cfg)
    for options in (dict(), dict(cfg_scale=1.0), dict(threshold=0.6)):
        want = eager.generate(ids, mask, **KW, seed=0, **options)
        got = graphed.generate(ids, mask, **KW, seed=0, **options)
        agree = float((got.sequences == want.sequences).double().mean())
        path = graph_path(graphed, models)
        assert agree > BF16_GRAPH_MIN, f"{options}: {agree:.3f} of the tokens agree; {path}"
