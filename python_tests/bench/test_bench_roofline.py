"""bench/roofline.py, the FLOP and byte model of a denoising step: a hand count on a tiny
config, and torch's own FLOP counter on the reference forward (every row computed)."""
import os
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository
sys.path.insert(0, os.path.join(ROOT, "bench"))
import roofline  # noqa: E402
import synthetic  # noqa: E402

from illada_rt import ModelConfig, reference  # noqa: E402

# d 8, 2 heads of 4, 1 KV head (kv = 4), FFN 12, 2 layers, 10 embedding rows
TINY = ModelConfig.from_dict(dict(model_type="llada", d_model=8, n_heads=2, n_kv_heads=1, n_layers=2,
                                  mlp_hidden_size=12, vocab_size=10, embedding_size=10, rope_theta=10000.0,
                                  weight_tying=True, mask_token_id=9, max_sequence_length=64))


def test_exact_step_flops_and_bytes_by_hand():
    # batch 1, prompt 4 + answer 2 (L = 6), block 2: layer 0 on all 6 rows, the last layer's
    # queries on the block's 2 rows, the head on 2 rows
    qkv = 2 * 6 * 8 * (8 + 2 * 4)                  # 1536: q, k, v of all 6 rows, both layers
    layer0 = qkv + 4 * 6 * 6 * 2 * 4 + 2 * 6 * 8 * 8 + 2 * 6 * 3 * 8 * 12      # + attn 1152, out 768, ffn 3456
    layer1 = qkv + 4 * 2 * 6 * 2 * 4 + 2 * 2 * 8 * 8 + 2 * 2 * 3 * 8 * 12      # + attn 384, out 256, ffn 1152
    head = 2 * 2 * 8 * 10
    assert layer0 + layer1 + head == 10560
    # bytes (float32): weights 2 x (128 + 64 + 288 + 16) + final norm 8 + head 80 elements
    weights = 2 * (8 * 16 + 8 * 8 + 3 * 8 * 12 + 2 * 8) + 8 + 10 * 8
    act0 = 2 * (6 * (16 + 8) + 6 * (32 + 36)) + 2 * 6 * 4       # rows' h + qkv, query rows' 4d + 3F, K/V read
    act1 = 2 * (6 * (16 + 8) + 2 * (32 + 36)) + 2 * 6 * 4
    io = 6 * 8 + 2 * 2 * 10                                      # embedding rows in, logits out and back
    cost = roofline.step_cost(TINY, 1, 4, 2, 2, "exact", 2, elt=4)
    assert cost.flops == 10560
    assert cost.bytes == 4 * (weights + act0 + act1 + io) == 11712
    batch3 = roofline.step_cost(TINY, 3, 4, 2, 2, "exact", 2, elt=4)
    assert batch3.flops == 3 * 10560 and batch3.bytes == 4 * (weights + 3 * (act0 + act1 + io))


@pytest.mark.parametrize("name,batch,length", [("small", 2, 24), ("small", 1, 40)])
def test_reference_flops_match_torch_flop_counter(name, batch, length):
    """Every row through every layer and the head: the reference forward, counted by torch."""
    cfg = synthetic.synthetic_config(name, n_layers=2)
    state = dict(synthetic.synthetic_weights(cfg, torch.float32, torch.device("cpu")))
    ids = torch.randint(0, cfg.vocab_size, (batch, length))
    with FlopCounterMode(display=False) as counter:
        reference.ReferenceModel(cfg, state)(ids)
    expected = roofline.step_cost(cfg, batch, length - 8, 8, 8, "reference", 8, elt=4).flops
    assert counter.get_total_flops() == expected


def test_cache_modes_average_prefill_and_cheaper_steps():
    exact = roofline.step_cost(TINY, 1, 4, 4, 2, "exact", 2, elt=2)
    prefix = roofline.step_cost(TINY, 1, 4, 4, 2, "prefix", 2, elt=2)
    dual = roofline.step_cost(TINY, 1, 4, 4, 2, "dual", 2, elt=2)
    assert dual.flops < prefix.flops < exact.flops
    # one block of 2 steps: (prefill writing the cache + one step on the block's rows) / 2
    fill = roofline.forward_cost(TINY, 1, 6, 6, 2, 2, 2, cache_write=True)
    step = roofline.forward_cost(TINY, 1, 2, 6, 2, 2, 2)
    one_block = roofline.step_cost(TINY, 1, 4, 2, 2, "dual", 2, elt=2)
    assert one_block.flops == (fill.flops + step.flops) / 2 and one_block.bytes == (fill.bytes + step.bytes) / 2
    assert fill.flops == roofline.step_cost(TINY, 1, 4, 2, 2, "exact", 2, elt=2).flops
    assert fill.bytes > roofline.forward_cost(TINY, 1, 6, 6, 2, 2, 2).bytes
    with pytest.raises(ValueError, match="mode"):
        roofline.step_cost(TINY, 1, 4, 2, 2, "fast", 2, elt=2)


def test_quantized_matrices_count_their_stored_bytes():
    matrices, norms, top = 8 * 16 + 8 * 8 + 3 * 8 * 12, 2 * 8, 8 + 10 * 8   # per layer; final norm + head
    assert roofline.weight_bytes(TINY, 2) == 2 * (2 * (matrices + norms) + top)
    assert roofline.weight_bytes(TINY, 2, matrix_elt=1.0) == 2 * (matrices + 2 * norms) + 2 * top
    dense = roofline.step_cost(TINY, 1, 4, 2, 2, "exact", 2, elt=2)
    int4 = roofline.step_cost(TINY, 1, 4, 2, 2, "exact", 2, elt=2, quant="int4")
    assert int4.flops == dense.flops
    assert dense.bytes - int4.bytes == 2 * matrices * (2 - roofline.MATRIX_BYTES["int4"])
