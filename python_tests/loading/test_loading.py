"""Checkpoint and config errors name the file and the tensor."""
import json
import os
import re

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


# ------------------------------------------------------------------ hostile checkpoints

def _with_index(path, index):
    raw = index if isinstance(index, bytes) else json.dumps(index).encode()
    (path / "model.safetensors.index.json").write_bytes(raw)


@pytest.mark.parametrize("index,rule", [
    ({"weight_map": ["model-00001-of-00002.safetensors"]}, "\"weight_map\" must be an object"),   # was AttributeError
    ({"weight_map": {"model.transformer.wte.weight": 5}}, "must be a file name, got 5"),          # was TypeError
    ({"weight_map": {"model.transformer.wte.weight": "/etc/hostname"}}, "is not a file inside"),
    ({"weight_map": {"model.transformer.wte.weight": "../model.safetensors"}}, "is not a file inside"),
    ({"metadata": {}}, "\"weight_map\" must be an object"),
    ([1, 2], "\"weight_map\" must be an object"),
    (b'{"weight_map": {"\xff": "x"}}', "UnicodeDecodeError"),
    (b"[" * 100000 + b"]" * 100000, "RecursionError"),
])
def test_a_broken_index_names_the_file(tmp_path, index, rule):
    write_checkpoint(str(tmp_path), "llada", shards=2)
    _with_index(tmp_path, index)
    with pytest.raises(CheckpointError) as e:
        Engine.from_pretrained(str(tmp_path))
    assert str(e.value).startswith(str(tmp_path / "model.safetensors.index.json")) and rule in str(e.value)


def test_an_index_naming_a_tensor_its_shard_lacks(tmp_path):
    write_checkpoint(str(tmp_path), "llada", shards=2)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    name = "model.transformer.blocks.1.up_proj.weight"
    other = next(f for f in set(index["weight_map"].values()) if f != index["weight_map"][name])
    index["weight_map"][name] = other
    _with_index(tmp_path, index)
    with pytest.raises(CheckpointError, match=f"{other}: tensor {name} is named in model.safetensors.index.json"):
        Engine.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("name,rule", [
    ("model.transformer.ff_out.weight", "not part of the model config.json describes (config.json says "
                                        "weight_tying: the head is the embedding)"),
    ("model.transformer.blocks.0.q_norm.weight", "blocks.0.q_norm.weight is not part of the model"),
])
def test_a_tensor_the_config_does_not_describe_is_refused(tmp_path, name, rule):
    """Before: a tied config over an untied checkpoint loaded, and used the embedding as the head."""
    write_checkpoint(str(tmp_path), "illada", shards=2)
    save_file({name: torch.zeros(300, 64)}, str(tmp_path / "extra.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"][name] = "extra.safetensors"
    _with_index(tmp_path, index)
    with pytest.raises(CheckpointError, match=re.escape(rule)):
        Engine.from_pretrained(str(tmp_path))


def test_every_shape_is_checked_before_the_first_tensor_is_read(tmp_path, monkeypatch):
    """A mismatch in the last layer fails before the loader reads (and converts) the earlier ones."""
    from illada_rt.loading import safetensors as reader_module

    write_checkpoint(str(tmp_path), "llada", n_layers=3)
    p = "model.transformer.blocks.2.ff_out.weight"
    from safetensors.torch import load_file
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights[p] = torch.zeros(64, 50)
    save_file(weights, str(tmp_path / "model.safetensors"))
    reads = []
    real = reader_module.TensorReader.read
    monkeypatch.setattr(reader_module.TensorReader, "read",
                        lambda self, *a, **k: reads.append(a) or real(self, *a, **k))
    with pytest.raises(CheckpointError,
                       match=re.escape(f"tensor {p} has shape (64, 50), config.json implies (64, 96)")):
        Engine.from_pretrained(str(tmp_path))
    assert reads == []
