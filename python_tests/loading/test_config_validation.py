"""config.json is checked strictly before anything is sized by it: JSON types, ranges, special ids,
the layer count the weight files hold; the RoPE tables follow the sequences run, not the config."""
import json
import math
import time

import pytest
import torch

from checkpoints import make_config, write_checkpoint
from prompts import random_prompt
from illada_rt import CheckpointError, ConfigError, Engine, ModelConfig


@pytest.mark.parametrize("overrides,words", [
    (dict(n_layers=5.9), ["n_layers must be an integer", "5.9"]),            # before: 5
    (dict(n_layers=True), ["n_layers must be an integer", "True"]),          # before: 1
    (dict(n_layers="2"), ["n_layers must be an integer"]),
    (dict(d_model=64.0), ["d_model must be an integer"]),
    (dict(weight_tying="false"), ["weight_tying must be a boolean"]),       # before: tied
    (dict(weight_tying=0), ["weight_tying must be a boolean"]),
    (dict(rope_theta=0), ["rope_theta must be a finite number > 0"]),       # before: loaded, one token repeated
    (dict(rope_theta=-1.0), ["rope_theta must be a finite number > 0"]),
    (dict(rope_theta=math.nan), ["rope_theta must be a finite number > 0"]),
    (dict(rope_theta=math.inf), ["rope_theta must be a finite number > 0"]),
    (dict(rope_theta=10 ** 400), ["rope_theta must be a finite number > 0"]),   # before: OverflowError
    (dict(rope_theta="1e4"), ["rope_theta must be a number"]),
    (dict(rms_norm_eps=0), ["rms_norm_eps must be a finite number > 0"]),
    (dict(eos_token_id=[247, 248]), ["eos_token_id must be an integer", "list of ids is not supported"]),
    (dict(eos_token_id=250), ["eos_token_id 250 is outside the vocabulary"]),
    (dict(eos_token_id=-1), ["eos_token_id -1 is outside the vocabulary"]),
    (dict(pad_token_id=10 ** 6), ["pad_token_id 1000000 is outside the vocabulary"]),
    (dict(eos_token_id=246), ["eos_token_id 246 equals mask_token_id"]),
    (dict(pad_token_id=246), ["pad_token_id 246 equals mask_token_id"]),
    (dict(mask_token_id=5.0), ["mask_token_id must be an integer"]),
    (dict(n_kv_heads=0), ["n_kv_heads must be positive"]),                  # before: n_heads
    (dict(embedding_size=0), ["embedding_size must be positive"]),          # before: vocab_size
    (dict(max_sequence_length=1e20), ["max_sequence_length must be an integer"]),
    (dict(max_sequence_length=2 ** 24 + 1), ["max_sequence_length 16777217 exceeds 16777216"]),
    (dict(include_bias=0), ["include_bias=0"]),
    (dict(rope=1), ["rope=1"]),
])
def test_config_values_are_checked_by_type_and_range(tmp_path, overrides, words):
    raw = make_config("llada", **overrides)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dir(str(tmp_path))
    message = str(e.value)
    assert message.startswith(str(tmp_path / "config.json")), message
    for word in words:
        assert word in message, message


def test_null_means_the_default():
    cfg = ModelConfig.from_dict(make_config("llada", n_kv_heads=None, embedding_size=None, eos_token_id=None,
                                            pad_token_id=None, weight_tying=None, rms_norm_eps=None))
    assert (cfg.n_kv_heads, cfg.embedding_size, cfg.eos_token_id, cfg.weight_tying) == (4, 250, None, False)


@pytest.mark.parametrize("content,words", [
    (b'{"model_type": "llada", "d_model": "\xff\xfe"}', ["not UTF-8"]),    # before: UnicodeDecodeError
    (b"[" * 100000 + b"]" * 100000, ["nested too deeply"]),                  # before: RecursionError
    (b"[1, 2]", ["expected a JSON object"]),
])
def test_unreadable_config_json_names_the_file(tmp_path, content, words):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ConfigError) as e:
        Engine.from_pretrained(str(tmp_path))
    assert str(e.value).startswith(str(tmp_path / "config.json"))
    for word in words:
        assert word in str(e.value)


def _with_config(path, **overrides):
    raw = json.loads((path / "config.json").read_text())
    raw.update(overrides)
    (path / "config.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("quantization", [None, "int8"])
def test_a_layer_count_the_files_do_not_hold_is_refused_before_anything_is_sized(tmp_path, quantization):
    """Before: n_layers 10**7 built 9 * 10**7 expected names (2 minutes, 19.5 GB) before failing."""
    write_checkpoint(str(tmp_path), "llada")
    _with_config(tmp_path, n_layers=10 ** 6)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"model.safetensors: 2 layers stored \(blocks 0..1\), config.json "
                                              r"says n_layers 1000000"):
        Engine.from_pretrained(str(tmp_path), quantization=quantization)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("shards", [1, 2])
def test_a_stored_layer_beyond_n_layers_is_refused(tmp_path, shards):
    """Before: 3 layers stored and n_layers 2 loaded the first two and dropped the third silently."""
    write_checkpoint(str(tmp_path), "illada", shards=shards, n_layers=3)
    _with_config(tmp_path, n_layers=2)
    with pytest.raises(CheckpointError, match=r"3 layers stored \(blocks 0..2\), config.json says n_layers 2"):
        Engine.from_pretrained(str(tmp_path))


def test_the_rope_tables_follow_the_sequences_run(tmp_path):
    """Before: [max_sequence_length, head_dim / 2] tables at construction (9.4 GB for 2.5e7 positions)."""
    write_checkpoint(str(tmp_path / "big"), "llada", max_sequence_length=2 ** 24)
    write_checkpoint(str(tmp_path / "small"), "llada", max_sequence_length=64)
    big, small = Engine.from_pretrained(str(tmp_path / "big")), Engine.from_pretrained(str(tmp_path / "small"))
    assert big.model.rope_cos.shape[0] == 0
    ids = random_prompt(big.cfg, 2, 7, seed=1)
    for options in (dict(), dict(cache="dual")):
        want = small.generate(ids, gen_length=16, block_length=8, steps=16, seed=0, **options)
        got = big.generate(ids, gen_length=16, block_length=8, steps=16, seed=0, **options)
        assert torch.equal(got.sequences, want.sequences)
    assert 23 <= big.model.rope_cos.shape[0] <= 2 * 23 and big.model.rope_sin.shape == big.model.rope_cos.shape
    long_ids = random_prompt(big.cfg, 1, 40, seed=2)
    assert torch.equal(big.logits(long_ids), small.logits(long_ids))
    assert big.model.rope_cos.shape[0] >= 40
    with pytest.raises(ValueError, match="exceeds max_sequence_length 64"):
        small.logits(random_prompt(big.cfg, 1, 65, seed=3))
