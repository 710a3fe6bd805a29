"""Quantized checkpoints: illada_rt.quantize / `illada-rt convert` write them, Engine.from_pretrained
reads them as stored (the same model as quantizing at load), and refuses ones that disagree with
their config.json section."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import illada_rt
from checkpoints import write_checkpoint, write_text_checkpoint
from prompts import random_prompt
from illada_rt import CheckpointError, Engine
from illada_rt.quant.formats import QuantizedWeight

GROUP = 16


@pytest.fixture(scope="module")
def sources(layout_dirs, tmp_path_factory, kernel_impl):
    out = dict(layout_dirs)
    bf16 = str(tmp_path_factory.mktemp("qsrc_bf16"))
    write_checkpoint(bf16, "illada", dtype=torch.bfloat16)
    out["bf16"] = bf16
    return out


def section(path):
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)["quantization"]


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
@pytest.mark.parametrize("quantize_head", [False, True])
def test_saved_checkpoint_loads_to_the_same_model(tmp_path, sources, layout, fmt, quantize_head):
    out = illada_rt.quantize(sources[layout], tmp_path / "q", fmt, group_size=GROUP, quantize_head=quantize_head)
    assert section(out) == {"format": fmt, "group_size": GROUP if fmt == "int4" else None,
                            "zero_point": fmt == "int4", "quantize_head": quantize_head, "version": 1,
                            "modules": ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]
                            + (["lm_head"] if quantize_head else [])}
    at_load = Engine.from_pretrained(sources[layout], quantization=fmt, group_size=GROUP, quantize_head=quantize_head)
    stored = Engine.from_pretrained(out)
    assert isinstance(stored.model.layers[0].wqkv, QuantizedWeight)
    assert isinstance(stored.model.head, QuantizedWeight) == quantize_head
    ids = random_prompt(stored.cfg, 2, 30, seed=5)
    assert torch.equal(stored.logits(ids), at_load.logits(ids))
    assert torch.equal(Engine.from_pretrained(out, quantization=fmt).logits(ids), at_load.logits(ids))


def test_sharded_and_bf16_source(tmp_path, sources):
    out = illada_rt.quantize(sources["bf16"], tmp_path / "q", "int4", group_size=GROUP, max_shard_bytes=20_000)
    names = sorted(os.listdir(out))
    shards = [n for n in names if n.endswith(".safetensors")]
    assert len(shards) > 2 and "model.safetensors.index.json" in names and not any(n.endswith(".tmp") for n in names)
    stored = {}
    for s in shards:
        stored.update(load_file(os.path.join(out, s)))
    assert stored["model.transformer.wte.weight"].dtype == torch.bfloat16       # dense tensors keep their dtype
    assert stored["model.transformer.blocks.1.up_proj.qweight"].dtype == torch.uint8
    assert "model.transformer.blocks.1.up_proj.weight" not in stored
    ids = random_prompt(Engine.from_pretrained(out).cfg, 1, 12, seed=6)
    want = Engine.from_pretrained(sources["bf16"], quantization="int4", group_size=GROUP).logits(ids)
    assert torch.equal(Engine.from_pretrained(out).logits(ids), want)


def test_tokenizer_files_are_copied(tmp_path):
    src = str(tmp_path / "text")
    write_text_checkpoint(src)
    out = illada_rt.quantize(src, tmp_path / "q", "int8")
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    assert isinstance(Engine.from_pretrained(out).generate_text("w1 w2", gen_length=8, block_length=8, steps=8), str)


# ------------------------------------------------------------------ bad input

@pytest.fixture()
def int4_dir(tmp_path, sources):
    return illada_rt.quantize(sources["llada"], tmp_path / "q4", "int4", group_size=GROUP)


def rewrite(path, edit):
    """Apply edit(dict of tensors) to the single weight file."""
    fname = os.path.join(path, "model.safetensors")
    tensors = load_file(fname)
    edit(tensors)
    save_file(tensors, fname, metadata={"format": "pt"})
    return fname


def rewrite_section(path, **changes):
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    raw["quantization"].update(changes)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(raw, f)


def test_mismatching_quantization_argument(int4_dir):
    with pytest.raises(CheckpointError, match="quantized to int4.*quantization='int8'"):
        Engine.from_pretrained(int4_dir, quantization="int8")


def test_missing_scale_names_file_and_tensor(int4_dir):
    rewrite(int4_dir, lambda t: t.pop("model.transformer.blocks.1.attn_out.scale"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor model\.transformer\.blocks\.1\.attn_out"
                                              r"\.scale missing"):
        Engine.from_pretrained(int4_dir)


def test_wrong_dtype_names_the_tensor(int4_dir):
    def to_int8(t):
        name = "model.transformer.blocks.0.q_proj.qweight"
        t[name] = t[name].to(torch.int8)
    fname = rewrite(int4_dir, to_int8)
    with pytest.raises(CheckpointError, match=f"{fname}: tensor model.transformer.blocks.0.q_proj.qweight has "
                                              "dtype torch.int8, the int4 quantized checkpoint stores torch.uint8"):
        Engine.from_pretrained(int4_dir)


def test_group_size_disagreeing_with_tensors(int4_dir):
    rewrite_section(int4_dir, group_size=32)
    with pytest.raises(CheckpointError, match=r"scale has shape \(\d+, 4\), the int4 quantized checkpoint and config.json imply \(\d+, 2\)"):
        Engine.from_pretrained(int4_dir)


def test_format_disagreeing_with_tensors(int4_dir):
    rewrite_section(int4_dir, format="int8", group_size=None, zero_point=False)
    with pytest.raises(CheckpointError, match="zero is not part of the int8 checkpoint"):
        Engine.from_pretrained(int4_dir)


def test_dense_matrix_in_a_quantized_checkpoint(tmp_path, sources):
    out = illada_rt.quantize(sources["llada"], tmp_path / "q8", "int8")

    def densify(t):
        base = "model.transformer.blocks.0.v_proj"
        t[base + ".weight"] = t.pop(base + ".qweight").float()
        t.pop(base + ".scale")
    rewrite(out, densify)
    with pytest.raises(CheckpointError, match="blocks.0.v_proj.weight is dense, but config.json says it is quantized"):
        Engine.from_pretrained(out)


def test_head_parts_without_quantize_head(tmp_path, sources):
    out = illada_rt.quantize(sources["llada"], tmp_path / "qh", "fp8", quantize_head=True)
    rewrite_section(out, quantize_head=False)
    with pytest.raises(CheckpointError, match="ff_out.qweight is not part of the fp8 checkpoint"):
        Engine.from_pretrained(out)


@pytest.mark.parametrize("bad,match", [({"format": "int2"}, "quantization.format 'int2'"),
                                       ({"group_size": 0}, "group_size 0 must be a positive even"),
                                       ({"version": 9}, "version 9 is not supported")])
def test_bad_section_values(int4_dir, bad, match):
    rewrite_section(int4_dir, **bad)
    with pytest.raises(CheckpointError, match=match):
        Engine.from_pretrained(int4_dir)


def test_other_libraries_quantization_config(tmp_path):
    path = str(tmp_path / "gptq")
    write_checkpoint(path, "llada", quantization_config={"quant_method": "awq", "bits": 4})
    with pytest.raises(CheckpointError, match=r"quant_method 'awq'\) is another library"):
        Engine.from_pretrained(path)


def test_quantize_refuses_bad_destinations(tmp_path, sources, int4_dir):
    with pytest.raises(ValueError, match="already holds weights"):
        illada_rt.quantize(sources["llada"], int4_dir, "int8")
    with pytest.raises(ValueError, match="is the source checkpoint"):
        illada_rt.quantize(sources["llada"], sources["llada"], "int8")
    with pytest.raises(ValueError, match="already quantized"):
        illada_rt.quantize(int4_dir, tmp_path / "again", "int8")
    with pytest.raises(ValueError, match="unknown quantization format"):
        illada_rt.quantize(sources["llada"], tmp_path / "x", "int5")
    assert not os.path.exists(tmp_path / "x")


# ------------------------------------------------------------------ command line

def run(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "illada_rt", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_cli_convert_then_generate_and_info(tmp_path):
    src, out = str(tmp_path / "text"), str(tmp_path / "int4")
    write_text_checkpoint(src)
    r = run("convert", "--model", src, "--out", out, "--format", "int4", "--group-size", "32", "--quantize-head")
    assert r.returncode == 0, r.stderr
    assert section(out)["group_size"] == 32 and section(out)["quantize_head"] is True
    gen = ["--gen-length", "8", "--block-length", "8", "--steps", "8"]
    stored = run("generate", "w1 w2", "--model", out, *gen)
    at_load = run("generate", "w1 w2", "--model", src, "--quantization", "int4", "--group-size", "32",
                  "--quantize-head", *gen)
    assert stored.returncode == 0 and at_load.returncode == 0, stored.stderr + at_load.stderr
    assert stored.stdout == at_load.stdout and stored.stdout.startswith("w1 w2")
    info = run("info", "--model", out)
    assert info.returncode == 0 and "quantization (stored)" in info.stdout and "weights in memory, int4" in info.stdout


def test_cli_bad_quantization_errors(tmp_path):
    src = str(tmp_path / "src")
    write_checkpoint(src, "illada")
    r = run("convert", "--model", src, "--out", str(tmp_path / "o"), "--format", "int4", "--group-size", "32")
    assert r.returncode == 2 and "ff_out.weight [64, 112]" in r.stderr and "Traceback" not in r.stderr
    r = run("info", "--model", src, "--quantization", "int8")
    assert r.returncode == 0 and "weights in memory, int8" in r.stdout
    r = run("convert", "--model", src, "--out", str(tmp_path / "o"), "--format", "int3")
    assert r.returncode == 2 and "invalid choice" in r.stderr
