"""Engine.from_pretrained(..., quantization=...) on the tiny checkpoints: the quantized engine is the
reference model with dequantized weights, stays near the float model, generates, and holds the
expected fraction of the weight bytes."""
import dataclasses

import pytest
import torch

from prompts import random_prompt
from illada_rt import Engine, ModelConfig
from illada_rt.loading import load_state_dict
from illada_rt.quant.formats import QuantizedWeight, dequantize, quantize_weight
from illada_rt.model import weight_bytes
from illada_rt.quant.spec import EMBEDDING, HEAD, QuantSpec, check_spec, estimate_weight_bytes, quantized_shapes
from illada_rt.reference import ReferenceModel

GROUP = 16   # divides every input dim of both tiny layouts (64, 96, 112)
FORMATS = ["int8", "int4", "fp8"]


@pytest.fixture(scope="module")
def dirs(layout_dirs, kernel_impl):
    return layout_dirs


def dequantized_reference(path, fmt, quantize_head):
    """The float reference model whose block matrices (and head) are dequantize(quantize(w))."""
    cfg = ModelConfig.from_dir(path)
    state = load_state_dict(path, cfg)
    spec = QuantSpec(fmt, GROUP, True, quantize_head)
    for name in quantized_shapes(cfg, spec):
        source = state[name] if name in state else state[EMBEDDING]   # the tied head copies wte
        state[name] = dequantize(quantize_weight(source, fmt, GROUP))
    if quantize_head and cfg.weight_tying:
        cfg = dataclasses.replace(cfg, weight_tying=False)             # the head is no longer wte itself
    return ReferenceModel(cfg, state)


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("quantize_head", [False, True])
def test_weight_only_engine_is_the_dequantized_reference(dirs, layout, fmt, quantize_head):
    eng = Engine.from_pretrained(dirs[layout], quantization=fmt, group_size=GROUP, quantize_head=quantize_head)
    ids = random_prompt(eng.cfg, 2, 37, seed=1)
    want = dequantized_reference(dirs[layout], fmt, quantize_head)(ids)
    got = eng.logits(ids)
    assert (got - want).abs().max() < 1e-4 * want.abs().max()
    assert isinstance(eng.model.head, QuantizedWeight) == quantize_head
    assert not isinstance(eng.model.wte, QuantizedWeight) and eng.model.wte.dtype == torch.float32


# Measured on these seeded checkpoints (max |logit| ~ 20-30): mean |error| / mean |logit| is about
# 0.03 (int8), 0.3 (int4, groups of 16), 0.2 (fp8). Random tiny models with sharp attention amplify
# weight noise far more than trained ones (see README "Quantization").
MEAN_REL_ERROR = {"int8": 0.06, "int4": 0.6, "fp8": 0.4}
TOP1_AGREEMENT = {"int8": 0.85, "int4": 0.4, "fp8": 0.6}


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_logits_near_float(dirs, layout, fmt):
    base = Engine.from_pretrained(dirs[layout])
    eng = Engine.from_pretrained(dirs[layout], quantization=fmt, group_size=GROUP)
    ids = random_prompt(base.cfg, 2, 40, seed=2)
    want, got = base.logits(ids), eng.logits(ids)
    assert torch.isfinite(got).all()
    rel = float((got - want).abs().mean() / want.abs().mean())
    assert 0 < rel < MEAN_REL_ERROR[fmt]
    agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    assert agree >= TOP1_AGREEMENT[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cache", [None, "dual"])
def test_generate_runs_quantized(dirs, fmt, cache):
    eng = Engine.from_pretrained(dirs["llada"], quantization=fmt, group_size=GROUP)
    ids = random_prompt(eng.cfg, 2, 6, seed=3)
    out = eng.generate(ids, gen_length=16, block_length=8, steps=8, cache=cache, seed=0)
    assert out.sequences.shape == (2, 22) and torch.equal(out.sequences[:, :6], ids)
    assert not (out.answers == eng.cfg.mask_token_id).any()
    again = eng.generate(ids, gen_length=16, block_length=8, steps=8, cache=cache, seed=0)
    assert torch.equal(out.sequences, again.sequences)


def test_bfloat16_engine_with_int8(dirs):
    eng = Engine.from_pretrained(dirs["illada"], dtype="bfloat16", quantization="int8", group_size=GROUP)
    f32 = Engine.from_pretrained(dirs["illada"], quantization="int8")
    ids = random_prompt(eng.cfg, 1, 20, seed=4)
    assert eng.model.wte.dtype == torch.bfloat16
    got, want = eng.logits(ids), f32.logits(ids)
    assert (got - want).abs().mean() < 0.05 * want.abs().mean()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("quantize_head", [False, True])
def test_weight_bytes_are_the_expected_fraction(dirs, fmt, quantize_head):
    path = dirs["llada"]
    cfg = ModelConfig.from_dir(path)
    spec = QuantSpec(fmt, 32, True, quantize_head)
    dense = Engine.from_pretrained(path).model
    quant = Engine.from_pretrained(path, quantization=fmt, group_size=32, quantize_head=quantize_head).model
    shapes = quantized_shapes(cfg, spec)
    elements = sum(n * k for n, k in shapes.values())
    # bytes per weight: int8 / fp8 one code + a float32 scale per row; int4 half a byte + scale and
    # zero (float32 each) per group of 32
    per_row = {"int8": 4, "fp8": 4, "int4": 0}[fmt]
    per_weight = {"int8": 1.0, "fp8": 1.0, "int4": 0.5 + 8 / 32}[fmt]
    want_q = per_weight * elements + per_row * sum(n for n, _ in shapes.values())
    got = weight_bytes(quant)
    assert got["quantized"] == want_q
    assert got["total"] == estimate_weight_bytes(cfg, spec, 4)
    assert weight_bytes(dense)["total"] == estimate_weight_bytes(cfg, None, 4) == 4 * cfg.num_parameters
    assert got["quantized"] / (4 * elements) < {"int8": 0.27, "fp8": 0.27, "int4": 0.19}[fmt]  # 1/4 + 1/K, 3/16
    assert got["total"] < weight_bytes(dense)["total"]


def test_tied_head_quantized_as_a_copy(dirs):
    eng = Engine.from_pretrained(dirs["illada"], quantization="int8", quantize_head=True)
    assert isinstance(eng.model.head, QuantizedWeight) and eng.model.head.shape == tuple(eng.model.wte.shape)
    assert eng.model.wte.dtype == torch.float32


# ------------------------------------------------------------------ bad input

def test_unknown_format(dirs):
    with pytest.raises(ValueError, match="unknown quantization format 'int3'"):
        Engine.from_pretrained(dirs["llada"], quantization="int3")


def test_int4_group_not_dividing_names_the_tensor(dirs):
    # illada's FFN is 112 wide: its ff_out input dim is not a multiple of 32
    with pytest.raises(ValueError, match=r"blocks\.0\.ff_out\.weight \[64, 112\].*not divisible by 32.*e\.g\. 16"):
        Engine.from_pretrained(dirs["illada"], quantization="int4", group_size=32)
    with pytest.raises(ValueError, match="positive even"):
        Engine.from_pretrained(dirs["llada"], quantization="int4", group_size=15)


def test_fp8_refused_on_gpu_without_fp8(monkeypatch, dirs):
    cfg = ModelConfig.from_dir(dirs["llada"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(RuntimeError, match=r"fp8 needs fp8 tensor cores.*A100 has 8\.0"):
        check_spec(cfg, QuantSpec("fp8"), torch.device("cuda", 0))
    check_spec(cfg, QuantSpec("int8"), torch.device("cuda", 0))           # weight-only formats run there
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    check_spec(cfg, QuantSpec("fp8"), torch.device("cuda", 0))
    check_spec(cfg, QuantSpec("fp8"), torch.device("cpu"))                 # emulated on the CPU
    assert HEAD not in quantized_shapes(cfg, QuantSpec("fp8"))


def test_quantize_stream_reads_one_tensor_at_a_time(dirs):
    # each tensor is quantized and handed on before the next one is read: the host never holds the model
    from illada_rt.loading import iter_weights
    from illada_rt.loading.quantize_at_load import quantize_stream
    cfg = ModelConfig.from_dir(dirs["illada"])
    read = []

    def source():
        for name, t in iter_weights(dirs["illada"], cfg, None):
            read.append(name)
            yield name, t

    spec = QuantSpec("int4", GROUP, True, quantize_head=True)
    seen, copies = 0, 0
    for name, out in quantize_stream(source(), cfg, spec, torch.float32, torch.device("cpu")):
        seen += 1
        copies += name == HEAD                               # the tied head's copy follows wte unread
        assert len(read) == seen - copies
        assert isinstance(out, QuantizedWeight) == (name in quantized_shapes(cfg, spec))
    assert seen == len(read) + 1
