"""The loading package: config.json read once per load, one safetensors reader for every kind of
checkpoint, Checkpoint.open's description of a directory."""
import builtins
import os
import re

import pytest
import torch

import illada_rt
from checkpoints import write_checkpoint
from illada_rt import CheckpointError, ConfigError, Engine
from illada_rt.config import expected_shapes
from illada_rt.loading import Checkpoint, TensorReader, load_model
from illada_rt.loading import safetensors as st_reader
from illada_rt.quant.spec import QuantSpec
from gptq_checkpoints import write_gptq

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def config_reads(monkeypatch):
    """A list that collects the path of every config.json opened for reading from now on."""
    reads = []
    real_open = builtins.open

    def counting_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.basename(os.fspath(file)) == "config.json" \
                and not any(c in mode for c in "wax+"):
            reads.append(os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    return reads


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Each kind of checkpoint: dense, written by illada_rt.quantize (int4), 4-bit GPTQ."""
    dense = str(tmp_path_factory.mktemp("dense"))
    write_checkpoint(dense, "illada", shards=2)
    stored = illada_rt.quantize(dense, str(tmp_path_factory.mktemp("q") / "int4"), "int4", group_size=16)
    gptq = str(tmp_path_factory.mktemp("gptq"))
    write_gptq(gptq)
    return {"dense": dense, "stored": stored, "gptq": gptq}


@pytest.mark.parametrize("kind,quantization", [("dense", None), ("dense", "int8"), ("stored", None),
                                               ("stored", "int4"), ("gptq", None)])
def test_one_load_reads_config_json_once(dirs, config_reads, kind, quantization):
    eng = Engine.from_pretrained(dirs[kind], quantization=quantization, group_size=16)
    assert config_reads == [os.path.join(dirs[kind], "config.json")]
    assert eng.cfg.n_layers == 2


def test_quantize_reads_the_source_config_once(dirs, tmp_path, config_reads):
    illada_rt.quantize(dirs["dense"], tmp_path / "int8", "int8")
    assert config_reads == [os.path.join(dirs["dense"], "config.json")]


def test_checkpoint_describes_each_kind(dirs):
    dense, stored, gptq = (Checkpoint.open(dirs[k]) for k in ("dense", "stored", "gptq"))
    assert dense.quantization is None and dense.foreign_method is None and dense.cfg.weight_tying
    assert stored.quantization == QuantSpec("int4", 16, True, False) and stored.foreign_method is None
    assert stored.raw["quantization"] == stored.quantization.to_section() and stored.cfg == dense.cfg
    assert gptq.quantization is None and gptq.foreign_method == "gptq"
    assert gptq.config_path == os.path.join(dirs["gptq"], "config.json")


def test_checkpoint_open_refuses_before_any_weight(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        Checkpoint.open(tmp_path)
    write_checkpoint(str(tmp_path), "llada", quantization_config={"quant_method": "awq"})
    os.remove(tmp_path / "model.safetensors")          # never reached: the config is refused first
    with pytest.raises(CheckpointError, match=r"quant_method 'awq'\) is another library"):
        Checkpoint.open(tmp_path)


def test_load_model_takes_a_checkpoint_or_a_directory(dirs, config_reads):
    ckpt = Checkpoint.open(dirs["stored"])
    model = load_model(ckpt, torch.float32, torch.device("cpu"))
    assert config_reads == [ckpt.config_path]          # the Checkpoint is not read again
    again = load_model(dirs["stored"], torch.float32, torch.device("cpu"))
    ids = torch.tensor([[7, 8, 9, 10]])
    assert torch.equal(model.logits(ids, None), again.logits(ids, None))


# ------------------------------------------------------------------ the one reader

@pytest.mark.parametrize("kind,quantization", [("dense", None), ("dense", "int8"), ("stored", None), ("gptq", None)])
def test_every_load_opens_each_file_through_the_reader_once(dirs, monkeypatch, kind, quantization):
    opened = []
    real = st_reader.safe_open
    monkeypatch.setattr(st_reader, "safe_open", lambda path, **kw: opened.append(path) or real(path, **kw))
    Engine.from_pretrained(dirs[kind], quantization=quantization)
    files = sorted(os.path.join(dirs[kind], n) for n in os.listdir(dirs[kind]) if n.endswith(".safetensors"))
    assert len(files) == (2 if kind == "dense" else 1)
    # shards are found through the index; a single file is opened for its names, then for its tensors
    assert sorted(opened) == (files if len(files) > 1 else files * 2)


def test_reader_messages_name_file_and_tensor(dirs):
    shapes = expected_shapes(Checkpoint.open(dirs["dense"]).cfg)
    dense = TensorReader(dirs["dense"])
    name = "model.transformer.blocks.0.q_proj.weight"
    path = dense.files[name]
    assert dense.read(name, shapes[name]).shape == shapes[name]
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: tensor {name} has shape (64, 64), "
                                                        "config.json implies (32, 64)")):
        dense.read(name, (32, 64))
    with pytest.raises(CheckpointError, match="tensor nope and 1 more missing from the checkpoint"):
        dense.require(["nope", name, "nope2"])
    stored = TensorReader(dirs["stored"], "the int4 quantized checkpoint")
    q = "model.transformer.blocks.0.q_proj.qweight"
    with pytest.raises(CheckpointError, match=f"tensor {q} has dtype torch.uint8, the int4 quantized checkpoint "
                                              "stores torch.int8"):
        stored.read(q, dtype=torch.int8)
    with pytest.raises(CheckpointError, match="has shape .* the int4 quantized checkpoint and config.json imply"):
        stored.read(q, (1, 1), torch.uint8)
    with pytest.raises(CheckpointError, match=f"tensor {q} has dtype torch.uint8, expected floating point"):
        stored.read(q)
    with pytest.raises(CheckpointError, match="missing from the int4 quantized checkpoint"):
        stored.read("model.transformer.blocks.0.q_proj.weight")


def test_only_the_reader_and_the_writer_touch_safetensors():
    """Every weight file is read through loading/safetensors.py and written by loading/writer.py."""
    users = []
    for folder, _, names in os.walk(os.path.join(ROOT, "illada_rt")):
        for n in names:
            if n.endswith(".py"):
                path = os.path.join(folder, n)
                with open(path, encoding="utf-8") as f:
                    if "from safetensors" in f.read():
                        users.append(os.path.relpath(path, ROOT))
    assert sorted(users) == [os.path.join("illada_rt", "loading", "safetensors.py"),
                             os.path.join("illada_rt", "loading", "writer.py")]
