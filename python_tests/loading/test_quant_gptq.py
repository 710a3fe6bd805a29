"""4-bit GPTQ checkpoints (Hugging Face layout) load as int4: written (gptq_checkpoints.py) from known
codes, the engine must compute the model those codes, zero points and scales stand for."""
import pytest
import torch

from gptq_checkpoints import GROUP, pack_int32, write_gptq
from prompts import random_prompt
from illada_rt import CheckpointError, Engine, ModelConfig
from illada_rt.loading.gptq import unpack_int32
from illada_rt.reference import ReferenceModel


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
