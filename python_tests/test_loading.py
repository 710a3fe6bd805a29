"""Checkpoint and config errors name the file and the tensor."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from checkpoints import make_config, write_checkpoint
from illada_rt import CheckpointError, ConfigError, Engine, ModelConfig


def test_real_layouts_parse():
    llada = ModelConfig.from_dict(make_config("llada", d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32,
                                              mlp_hidden_size=12288, vocab_size=126464, embedding_size=126464,
                                              mask_token_id=126336, eos_token_id=126081, pad_token_id=126081,
                                              max_sequence_length=4096))
    assert llada.head_dim == 128 and not llada.weight_tying
    assert 7.5e9 < llada.num_parameters < 8.5e9
    illada = ModelConfig.from_dict(make_config("illada", d_model=4096, n_heads=32, n_kv_heads=8, n_layers=32,
                                               mlp_hidden_size=14336, vocab_size=155136, embedding_size=155136,
                                               mask_token_id=5, max_sequence_length=8192))
    assert illada.n_kv_heads == 8 and illada.weight_tying and illada.mask_token_id == 5


@pytest.mark.parametrize("key,value", [("include_bias", True), ("alibi", True), ("layer_norm_type", "default"),
                                       ("activation_type", "gelu"), ("model_type", "llama"), ("rope", False),
                                       ("attention_layer_norm", True), ("clip_qkv", 8.0)])
def test_unsupported_config_is_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        ModelConfig.from_dict(make_config("llada", **{key: value}))


@pytest.mark.parametrize("overrides,rule", [(dict(n_heads=5), "divisible"), (dict(n_kv_heads=3), "divisible"),
                                            (dict(mask_token_id=999), "mask_token_id"),
                                            (dict(embedding_size=100), "embedding_size")])
def test_inconsistent_config_is_refused(overrides, rule):
    with pytest.raises(ConfigError, match=rule):
        ModelConfig.from_dict(make_config("llada", **overrides))


def test_missing_required_key(tmp_path):
    cfg = make_config("llada")
    del cfg["mask_token_id"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="mask_token_id"):
        ModelConfig.from_dir(str(tmp_path))


def test_missing_and_corrupt_config(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        Engine.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Engine.from_pretrained(str(tmp_path))


def test_missing_weights_file(tmp_path):
    write_checkpoint(str(tmp_path), "llada")
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        Engine.from_pretrained(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(CheckpointError, match="pickle formats are not loaded"):
        Engine.from_pretrained(str(tmp_path))


def test_missing_tensor_is_named(tmp_path):
    write_checkpoint(str(tmp_path), "llada", shards=2)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.transformer.blocks.1.up_proj.weight"]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="blocks.1.up_proj.weight"):
        Engine.from_pretrained(str(tmp_path))


def test_missing_shard_is_named(tmp_path):
    write_checkpoint(str(tmp_path), "illada", shards=2)
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        Engine.from_pretrained(str(tmp_path))


def test_wrong_shape_names_file_and_tensor(tmp_path):
    write_checkpoint(str(tmp_path), "llada")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["mlp_hidden_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor .*ff_proj.weight has shape"):
        Engine.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("keep_fraction", [0.5, 0.999])
def test_truncated_file(tmp_path, keep_fraction):
    write_checkpoint(str(tmp_path), "llada")
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Engine.from_pretrained(str(tmp_path))


def test_garbage_file(tmp_path):
    write_checkpoint(str(tmp_path), "llada")
    (tmp_path / "model.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Engine.from_pretrained(str(tmp_path))


def test_bias_tensor_is_refused(tmp_path):
    write_checkpoint(str(tmp_path), "llada", shards=2)
    save_file({"model.transformer.blocks.0.q_proj.bias": torch.zeros(64)}, str(tmp_path / "extra.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.transformer.blocks.0.q_proj.bias"] = "extra.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="q_proj.bias"):
        Engine.from_pretrained(str(tmp_path))


def test_bad_dtype_and_device(tmp_path):
    write_checkpoint(str(tmp_path), "llada")
    with pytest.raises(ValueError, match="dtype"):
        Engine.from_pretrained(str(tmp_path), dtype="float64")
    for device in ("tpu", "mps"):
        with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda"):
            Engine.from_pretrained(str(tmp_path), device=device)
    # device="cuda" where CUDA cannot run: test_cuda_engine.py
