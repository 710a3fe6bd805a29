"""4-bit GPTQ checkpoints (Hugging Face layout) load as int4: written here from known codes, the
engine must compute the model those codes, zero points and scales stand for."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from checkpoints import make_config, make_weights
from conftest import random_prompt
from illada_rt import CheckpointError, Engine, ModelConfig
from illada_rt.loading.gptq import unpack_int32
from illada_rt.quant.formats import QuantizedWeight, dequantize
from illada_rt.quant.spec import BLOCK_MATRICES
from illada_rt.reference import ReferenceModel

GROUP = 32


def pack_int32(codes: torch.Tensor, dim: int) -> torch.Tensor:
    """uint8 4-bit codes -> int32 words of eight along dim (lowest bits first), as GPTQ packs them."""
    c = codes.to(torch.int64).movedim(dim, -1)
    c = c.reshape(*c.shape[:-1], c.shape[-1] // 8, 8)
    words = (c << torch.arange(0, 32, 4)).sum(-1)
    words = torch.where(words >= 2 ** 31, words - 2 ** 32, words)            # two's complement int32
    return words.to(torch.int32).movedim(-1, dim).contiguous()


def gptq_linear(w: torch.Tensor, g: torch.Generator, version: str):
    """GPTQ tensors for w [N, K] (random codes near w's scale) and the float weight they stand for."""
    n, k = w.shape
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    zero = torch.randint(1, 16, (n, k // GROUP), generator=g)                 # v1 cannot store zero 0
    scales = (w.abs().amax(1, keepdim=True) / 7 * (0.5 + torch.rand(n, k // GROUP, generator=g))).half()
    stored_zero = zero - 1 if version == "gptq" else zero
    parts = {"qweight": pack_int32(codes.t(), 0), "qzeros": pack_int32(stored_zero.t().to(torch.uint8), 1),
             "scales": scales.t().contiguous(), "g_idx": (torch.arange(k) // GROUP).to(torch.int32)}
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    dense = dequantize(QuantizedWeight("int4", packed, scales.float(), zero.float(), GROUP))
    return parts, dense


def write_gptq(path, version="gptq", **qc_overrides):
    os.makedirs(path, exist_ok=True)
    cfg = make_config("llada")
    qc = {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": False, "sym": False,
          "checkpoint_format": version}
    qc.update(qc_overrides)
    cfg["quantization_config"] = qc
    g = torch.Generator().manual_seed(7)
    tensors, state = {}, {}
    for name, w in make_weights(cfg).items():
        leaf = name.split(".")[-2]
        if ".blocks." in name and leaf in BLOCK_MATRICES:
            parts, dense = gptq_linear(w, g, version)
            tensors.update({name[: -len("weight")] + p: t for p, t in parts.items()})
            state[name] = dense
        else:
            tensors[name] = w
            state[name] = w
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return state


def test_unpack_inverts_pack():
    codes = torch.randint(0, 16, (16, 24), dtype=torch.uint8)
    assert torch.equal(unpack_int32(pack_int32(codes, 0), 0), codes)
    assert torch.equal(unpack_int32(pack_int32(codes, 1), 1), codes)


@pytest.mark.parametrize("version", ["gptq", "gptq_v2"])
def test_gptq_checkpoint_is_the_model_its_codes_describe(tmp_path, version):
    path = str(tmp_path / "gptq")
    state = write_gptq(path, version)
    eng = Engine.from_pretrained(path)
    assert eng.model.layers[0].wqkv.format == "int4" and eng.model.layers[0].wqkv.group_size == GROUP
    cfg = ModelConfig.from_dir(path)
    ids = random_prompt(cfg, 2, 24, seed=8)
    want = ReferenceModel(cfg, state)(ids)
    got = eng.logits(ids)
    assert (got - want).abs().max() < 1e-4 * want.abs().max()
    assert torch.equal(Engine.from_pretrained(path, quantization="int4").logits(ids), got)


def test_gptq_refusals(tmp_path):
    act = str(tmp_path / "act")
    write_gptq(act, desc_act=True)
    with pytest.raises(CheckpointError, match="desc_act"):
        Engine.from_pretrained(act)
    bits = str(tmp_path / "bits")
    write_gptq(bits, bits=8)
    with pytest.raises(CheckpointError, match="bits=8"):
        Engine.from_pretrained(bits)
    ok = str(tmp_path / "ok")
    write_gptq(ok)
    with pytest.raises(CheckpointError, match="loads as int4.*'int8'"):
        Engine.from_pretrained(ok, quantization="int8")
    with pytest.raises(ValueError, match="already quantized"):
        import illada_rt
        illada_rt.quantize(ok, tmp_path / "out", "int8")
    wrong = str(tmp_path / "wrong")
    write_gptq(wrong, group_size=16)                      # the tensors were written with groups of 32
    with pytest.raises(CheckpointError, match="disagree with group_size 16"):
        Engine.from_pretrained(wrong)
