"""The engine on CUDA: Engine.from_pretrained(device="cuda") against the CPU reference, token for
token in float32; bfloat16 against float32; non-finite logits; device checks.

The GPU tests skip without a CUDA device and a CUDA build. Their checkpoints have head_dim 64
(d_model 128, 2 heads), since the bfloat16/float16 attention kernels need head_dim 64 or 128.
The device checks at the end run everywhere.
"""
import os

import pytest
import torch

from checkpoints import write_checkpoint
from conftest import random_prompt
from illada_rt import Engine, ModelConfig, build_info, device, ops, reference
from illada_rt.denoise import Block, DenoiseSettings, StepBuffers
from illada_rt.loader import load_state_dict

CUDA_OK = torch.cuda.is_available() and build_info()["cuda"] and ops.cuda_devices()[0] > 0
needs_cuda = pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA device and a CUDA build")

# head_dim 64: MHA with an untied head, and GQA (2 query heads per KV head) with a tied one
CUDA_LAYOUTS = {"llada": dict(d_model=128, n_heads=2, n_kv_heads=2),
                "illada": dict(d_model=128, n_heads=2, n_kv_heads=1)}
KW = dict(steps=8, gen_length=16, block_length=8)


@pytest.fixture(scope="module", params=sorted(CUDA_LAYOUTS))
def models(request, tmp_path_factory):
    """dict(cpu=, cuda=, bf16= engines, ref= CPU reference, path=) for one head_dim-64 layout."""
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 matmuls in full precision (torch's default)
    path = str(tmp_path_factory.mktemp(f"cuda_{request.param}"))
    write_checkpoint(path, request.param, **CUDA_LAYOUTS[request.param])
    cfg = ModelConfig.from_dir(path)
    assert cfg.head_dim == 64
    return dict(cpu=Engine.from_pretrained(path), cuda=Engine.from_pretrained(path, device="cuda"),
                bf16=Engine.from_pretrained(path, device="cuda", dtype="bfloat16"),
                ref=reference.ReferenceModel(cfg, load_state_dict(path, cfg)), path=path)


def padded(cfg, batch=3, length=7, seed=9):
    ids = random_prompt(cfg, batch, length, seed=seed)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[-1, :1] = 0
    return ids.masked_fill(mask == 0, cfg.pad_token_id), mask


@needs_cuda
def test_weights_and_tables_live_on_the_device(models):
    m = models["cuda"].model
    assert models["cuda"].device.type == "cuda"
    tensors = [m.wte, m.head, m.ln_f, m.rope_cos, m.rope_sin] + [t for w in m.layers for t in vars(w).values()]
    assert all(t.is_cuda for t in tensors)
    assert models["bf16"].model.wte.dtype == torch.bfloat16 and models["bf16"].model.rope_cos.dtype == torch.float32


@needs_cuda
@pytest.mark.parametrize("with_mask", [False, True])
def test_logits_match_reference(models, with_mask):
    eng = models["cuda"]
    ids, mask = padded(eng.cfg) if with_mask else (random_prompt(eng.cfg, 2, 24, seed=1), None)
    ids[:, -4:] = eng.cfg.mask_token_id
    got = eng.logits(ids, mask)
    assert got.is_cuda and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), models["ref"](ids, mask), rtol=1e-4, atol=1e-4)


@needs_cuda
@pytest.mark.parametrize("options", [
    dict(), dict(temperature=0.8, seed=3), dict(remasking="random"), dict(remasking="random", temperature=0.5),
    dict(cfg_scale=1.0), dict(cfg_scale=0.5, temperature=0.7), dict(threshold=0.6), dict(threshold=0.5, cfg_scale=1.0),
])
@pytest.mark.parametrize("with_mask", [False, True])
def test_generate_matches_reference(models, options, with_mask):
    eng = models["cuda"]
    ids, mask = padded(eng.cfg) if with_mask else (random_prompt(eng.cfg, 3, 6, seed=7), None)
    kw = {**KW, "seed": 11, **options}
    out = eng.generate(ids, attention_mask=mask, **kw)
    expected, nfe = reference.generate(models["ref"], ids, mask, mask_id=eng.cfg.mask_token_id, **kw)
    assert out.sequences.device.type == "cpu"
    assert torch.equal(out.sequences, expected)
    assert out.nfe == nfe


@needs_cuda
@pytest.mark.parametrize("steps,gen_length,block_length", [(16, 16, 4), (32, 16, 8), (6, 12, 12), (10, 10, 5)])
def test_generate_grid_matches_reference(models, steps, gen_length, block_length):
    eng = models["cuda"]
    ids = random_prompt(eng.cfg, 2, 5 + steps % 7, seed=steps + gen_length)
    kw = dict(steps=steps, gen_length=gen_length, block_length=block_length, seed=0)
    out = eng.generate(ids, **kw)
    expected, nfe = reference.generate(models["ref"], ids, mask_id=eng.cfg.mask_token_id, **kw)
    assert torch.equal(out.sequences, expected) and out.nfe == nfe


@needs_cuda
@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("options", [dict(), dict(threshold=0.5), dict(temperature=0.8, remasking="random")])
def test_cache_modes_match_reference(models, mode, options):
    eng = models["cuda"]
    ids, mask = padded(eng.cfg)
    kw = {**KW, "seed": 0, **options}
    out = eng.generate(ids, mask, cache=mode, **kw)
    expected, nfe = reference.generate_with_cache(models["ref"], ids, mask, mode=mode,
                                                  mask_id=eng.cfg.mask_token_id, **kw)
    assert torch.equal(out.sequences, expected) and out.nfe == nfe


@needs_cuda
def test_early_stop_stream_infill_and_scores_match_the_cpu_engine(models):
    cpu, eng = models["cpu"], models["cuda"]
    ids, mask = padded(eng.cfg)
    kw = dict(steps=16, gen_length=32, block_length=8, seed=0)
    stop = int(cpu.generate(ids, mask, **kw).answers[0, 3])
    a, b = (e.generate(ids, mask, stop_at_eos=True, stop_token_ids=[stop], **kw) for e in (cpu, eng))
    assert torch.equal(a.sequences, b.sequences) and a.nfe == b.nfe and torch.equal(a.answer_lengths, b.answer_lengths)

    events = list(eng.stream(ids, mask, every_step=True, **kw))
    blocks = [e for e in events if e.kind == "block"]
    assert all(e.tokens.device.type == "cpu" for e in events)
    assert torch.equal(torch.cat([e.new_tokens for e in blocks], 1), eng.generate(ids, mask, **kw).answers)

    holes = random_prompt(eng.cfg, 2, 14, seed=21)
    holes[0, 2:5] = holes[1, 6:10] = holes[1, 0] = eng.cfg.mask_token_id
    for options in (dict(), dict(threshold=0.5), dict(block_length=2, steps=6, temperature=1.0, seed=5)):
        x, y = (e.infill(holes, **options) for e in (cpu, eng))
        assert torch.equal(x.sequences, y.sequences) and x.nfe == y.nfe and y.sequences.device.type == "cpu"

    prompt, answer = ids[0, 3:].tolist(), ids[1, 1:].tolist()
    for cfg_scale in (0.0, 1.5):
        want = cpu.log_likelihood(prompt, answer, mc_num=8, batch_size=4, cfg_scale=cfg_scale, seed=4)
        got = eng.log_likelihood(prompt, answer, mc_num=8, batch_size=4, cfg_scale=cfg_scale, seed=4)
        assert got == pytest.approx(want, rel=1e-4)
    options = [answer[:3], answer[:5], answer[:1]]
    torch.testing.assert_close(eng.score_choices(prompt, options), cpu.score_choices(prompt, options),
                               rtol=1e-4, atol=1e-4)


@needs_cuda
def test_device_inputs_are_accepted(models):
    eng = models["cuda"]
    ids, mask = padded(eng.cfg)
    want = eng.generate(ids, mask, **KW, seed=2)
    got = eng.generate(ids.cuda(), mask.cuda(), **KW, seed=2)
    assert torch.equal(want.sequences, got.sequences)
    torch.testing.assert_close(eng.logits(ids.cuda()), eng.logits(ids))


@needs_cuda
def test_bfloat16_agrees_with_float32(models, record_property):
    """Reported: top-1 agreement of bf16 logits with the float32 reference, and of bf16 answers."""
    eng, ref = models["bf16"], models["ref"]
    g = torch.Generator().manual_seed(0)
    ids = random_prompt(eng.cfg, 4, 64, seed=5)
    ids[torch.rand(ids.shape, generator=g) < 0.5] = eng.cfg.mask_token_id  # a half-denoised canvas
    got = eng.logits(ids)
    assert got.is_cuda and got.dtype == torch.float32 and bool(got.isfinite().all())
    top1 = float((got.argmax(-1).cpu() == ref(ids).argmax(-1)).double().mean())

    prompt, mask = padded(eng.cfg)
    answers = {}
    for name, options in (("greedy", {}), ("cfg", dict(cfg_scale=1.0)), ("threshold", dict(threshold=0.6)),
                          ("prefix", dict(cache="prefix")), ("dual", dict(cache="dual"))):
        out = eng.generate(prompt, mask, **KW, seed=0, **options)
        assert not bool((out.answers == eng.cfg.mask_token_id).any())
        cache = options.pop("cache", None)
        want = (reference.generate_with_cache(ref, prompt, mask, mode=cache, mask_id=eng.cfg.mask_token_id,
                                              **KW, seed=0, **options) if cache else
                reference.generate(ref, prompt, mask, mask_id=eng.cfg.mask_token_id, **KW, seed=0, **options))[0]
        answers[name] = float((out.answers == want[:, prompt.shape[1]:]).double().mean())
    record_property("bf16_top1_agreement", top1)
    record_property("bf16_answer_agreement", answers)
    print(f"\n[{os.path.basename(models['path'])}] bf16 vs float32: logits top-1 agreement {top1:.3f}; "
          "answer-token agreement " + ", ".join(f"{k} {v:.2f}" for k, v in answers.items()))
    assert top1 > 0.9


@needs_cuda
@pytest.mark.parametrize("options", [dict(), dict(threshold=0.9), dict(cfg_scale=1.0)])
def test_non_finite_logits_raise(models, options):
    eng = Engine.from_pretrained(models["path"], device="cuda")
    eng.model.head[7].fill_(float("nan"))  # vocabulary entry 7 of every row becomes NaN
    with pytest.raises(RuntimeError, match="non-finite"):
        eng.generate(random_prompt(eng.cfg, 2, 5, seed=0), **KW, **options)


@needs_cuda
@pytest.mark.parametrize("options", [
    dict(), dict(temperature=0.8, seed=3), dict(remasking="random", temperature=0.5), dict(cfg_scale=1.0),
    dict(cfg_scale=0.5, temperature=0.7), dict(threshold=0.6), dict(threshold=0.05), dict(threshold=0.5, cfg_scale=1.0),
    dict(steps=32), dict(stop_at_eos=True, stop_token_ids=[5, 9, 17]),
])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("conditional", [True, False])
def test_graph_replay_matches_eager(models, options, with_mask, conditional, record_property):
    """CUDA-graph replay (with the body in an IF node, and plain) == the eager loop, token for token."""
    model = models["cuda"].model
    eager = Engine(model, use_cuda_graphs=False)
    graphed = Engine(model)
    graphed._graphs.conditional = conditional
    ids, mask = padded(model.cfg) if with_mask else (random_prompt(model.cfg, 3, 6, seed=7), None)
    kw = {**KW, "seed": 11, **options}
    want = eager.generate(ids, attention_mask=mask, **kw)
    for _ in range(2):  # the second generation replays the cached graph
        got = graphed.generate(ids, attention_mask=mask, **kw)
        assert torch.equal(got.sequences, want.sequences) and got.nfe == want.nfe
    assert len(graphed._graphs.steps) == 1
    record_property("conditional_nodes", [s.conditional for s in graphed._graphs.steps.values()])


@needs_cuda
def test_graph_cache_is_per_shape(models):
    """Same batch, total and block length share a graph (prompt lengths may differ); padding does not."""
    model = models["cuda"].model
    eager, graphed = Engine(model, use_cuda_graphs=False), Engine(model)
    runs = [(random_prompt(model.cfg, 2, 6, seed=1), None, 16), (random_prompt(model.cfg, 2, 14, seed=2), None, 8),
            (*padded(model.cfg, batch=2, length=6), 16)]
    for ids, mask, gen_length in runs:
        kw = dict(gen_length=gen_length, block_length=8, steps=gen_length, temperature=0.5, seed=0)
        want, got = eager.generate(ids, mask, **kw), graphed.generate(ids, mask, **kw)
        assert torch.equal(got.sequences, want.sequences) and got.nfe == want.nfe
    assert len(graphed._graphs.steps) == 2
    assert Engine(model, use_cuda_graphs=False)._graphs is None


@needs_cuda
def test_graph_replay_bfloat16_agrees_with_eager(models):
    model = models["bf16"].model
    eager, graphed = Engine(model, use_cuda_graphs=False), Engine(model)
    ids, mask = padded(model.cfg)
    for options in (dict(), dict(cfg_scale=1.0), dict(threshold=0.6)):
        want = eager.generate(ids, mask, **KW, seed=0, **options)
        got = graphed.generate(ids, mask, **KW, seed=0, **options)
        assert float((got.sequences == want.sequences).double().mean()) > 0.9


# ---------------------------------------------------------------- device checks (run everywhere)


@pytest.mark.skipif(CUDA_OK, reason="CUDA can run here")
def test_cuda_device_raises_where_cuda_cannot_run(tmp_path):
    write_checkpoint(str(tmp_path), "llada")
    with pytest.raises(RuntimeError, match="device 'cuda' is unavailable: ") as err:
        Engine.from_pretrained(str(tmp_path), device="cuda")
    reasons = device.cuda_unavailable_reasons()
    assert reasons and all(r in str(err.value) for r in reasons)


def fake_cuda(monkeypatch, built: bool, torch_sees: bool, count: int, why: str = ""):
    monkeypatch.setattr(ops, "build_info", lambda: {"cuda": built})
    monkeypatch.setattr(ops, "cuda_devices", lambda: (count, why))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: torch_sees)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if torch_sees else 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_every_reason_is_named(monkeypatch):
    fake_cuda(monkeypatch, built=False, torch_sees=False, count=0, why="built without CUDA")
    with pytest.raises(RuntimeError) as err:
        device.resolve_device("cuda")
    assert "no CUDA kernels" in str(err.value) and "torch sees no CUDA device" in str(err.value)
    fake_cuda(monkeypatch, built=True, torch_sees=True, count=0, why="CUDA driver version is insufficient")
    with pytest.raises(RuntimeError, match="runtime sees no device .CUDA driver version is insufficient"):
        device.resolve_device("cuda")
    fake_cuda(monkeypatch, built=True, torch_sees=True, count=1)
    with pytest.raises(RuntimeError, match="index 3 is out of range"):
        device.resolve_device("cuda:3")
    assert device.resolve_device("cuda:0") == device.resolve_device("cuda") == torch.device("cuda", 0)
    fake_cuda(monkeypatch, built=True, torch_sees=True, count=2)
    with pytest.raises(RuntimeError, match=r"current CUDA device \(0\); call torch.cuda.set_device\(1\)"):
        device.resolve_device("cuda:1")
    for bad in ("tpu", "mps", 3.5):
        with pytest.raises(ValueError, match="device must be"):
            device.resolve_device(bad)


def test_error_word_reaches_python():
    """The CUDA error word check, on a stand-in workspace: zero passes, non-zero raises."""
    canvas = torch.zeros(2, 8, dtype=torch.int64)
    buf = StepBuffers(canvas, [Block(4, 8)], DenoiseSettings(steps_per_block=4))
    assert buf.workspace is None
    buf.check_finite(0)
    buf.workspace = torch.zeros(4, dtype=torch.int64)
    buf.check_finite(0)
    buf.workspace[0] = 1
    with pytest.raises(RuntimeError, match="non-finite.*block 3"):
        buf.check_finite(3)
