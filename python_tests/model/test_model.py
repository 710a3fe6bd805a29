"""Engine logits against the reference model: layouts, shards, dtypes, padding."""
import pytest
import torch

from checkpoints import write_checkpoint
from prompts import random_prompt
from illada_rt import Engine, ModelConfig
from illada_rt.loading import load_state_dict
from illada_rt.reference import ReferenceModel


def reference_for(path, dtype=torch.float32):
    cfg = ModelConfig.from_dir(path)
    return ReferenceModel(cfg, load_state_dict(path, cfg, dtype))


@pytest.mark.parametrize("shards", [1, 3])
def test_logits_match_reference(checkpoint, tmp_path, shards):
    layout, _ = checkpoint
    path = str(tmp_path / "ckpt")
    write_checkpoint(path, layout, shards=shards, seed=4)
    eng, ref = Engine.from_pretrained(path), reference_for(path)
    ids = random_prompt(eng.cfg, 3, 19, seed=0)
    ids[:, 5:9] = eng.cfg.mask_token_id  # masks are legal model input
    got, want = eng.logits(ids), ref(ids)
    assert got.shape == (3, 19, eng.cfg.vocab_size) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=5e-5)


def test_padded_embedding_rows_are_dropped(tmp_path):
    write_checkpoint(str(tmp_path), "llada")
    eng = Engine.from_pretrained(str(tmp_path))
    assert eng.cfg.embedding_size > eng.cfg.vocab_size
    assert eng.logits([[1, 2, 3]]).shape[-1] == eng.cfg.vocab_size


def test_left_padded_logits_match_reference(checkpoint):
    _, path = checkpoint
    eng, ref = Engine.from_pretrained(path), reference_for(path)
    ids = random_prompt(eng.cfg, 2, 11, seed=1)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    torch.testing.assert_close(eng.logits(ids, mask), ref(ids, mask), rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_logits_close_to_float32(checkpoint, dtype):
    """Error of the runtime in low precision at most ~2x the reference's own in that precision."""
    _, path = checkpoint
    eng = Engine.from_pretrained(path, dtype=dtype)
    ref32 = reference_for(path)
    ref_low = reference_for(path, getattr(torch, dtype))
    ids = random_prompt(eng.cfg, 2, 13, seed=2)
    want = ref32(ids)
    err_ours = (eng.logits(ids) - want).abs().max()
    err_torch = (ref_low(ids) - want).abs().max()
    assert err_ours <= 2 * err_torch + 1e-3
    top1 = (eng.logits(ids).argmax(-1) == want.argmax(-1)).float().mean()
    assert top1 > 0.9


def test_checkpoint_in_bf16_loads_as_float32(tmp_path):
    write_checkpoint(str(tmp_path), "illada", dtype=torch.bfloat16)
    eng = Engine.from_pretrained(str(tmp_path))
    assert eng.model.wte.dtype == torch.float32
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(eng.logits(ids), reference_for(str(tmp_path))(ids), rtol=1e-5, atol=5e-5)
