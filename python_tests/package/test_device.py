"""Where the engine runs and which op implementations it takes (device.py, ops/kernels.py).

CUDA is faked here (build info, device counts, compute capability), so every rule runs on the CPU:
a device torch cannot use is an error; the compiled kernels are taken where the build has code for
the device, the torch twins otherwise (with one warning), and an explicit "custom" that cannot run
is an error naming the reason.
"""
import re
import warnings

import pytest
import torch

from checkpoints import write_checkpoint
from prompts import random_prompt
from illada_rt import Engine, device, ops, reference
from illada_rt.loading import load_state_dict
from illada_rt.ops import kernels as kernel_choice

DEFAULT_TARGETS = {"cuda": True, "cuda_sass": ["sm_80", "sm_89", "sm_90a"], "cuda_ptx": ["compute_90"]}


def fake_cuda(monkeypatch, info=None, torch_sees=True, count=1, why="", capability=(9, 0)):
    """Pretend CUDA: the extension's build info and runtime device count, torch's devices."""
    info = DEFAULT_TARGETS if info is None else info
    monkeypatch.setattr(kernel_choice.core, "build_info", lambda: dict(info))
    monkeypatch.setattr(kernel_choice.core, "cuda_devices", lambda: (count, why))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: torch_sees)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if torch_sees else 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


# ---------------------------------------------------------------- device


def test_cuda_needs_a_device_torch_sees(monkeypatch):
    fake_cuda(monkeypatch, torch_sees=False, count=0)
    with pytest.raises(RuntimeError, match="device 'cuda' is unavailable: torch sees no CUDA device"):
        device.resolve_device("cuda")


def test_device_index_and_current_device(monkeypatch):
    fake_cuda(monkeypatch, count=1)
    with pytest.raises(RuntimeError, match="index 3 is out of range"):
        device.resolve_device("cuda:3")
    assert device.resolve_device("cuda:0") == device.resolve_device("cuda") == torch.device("cuda", 0)
    fake_cuda(monkeypatch, count=2)
    with pytest.raises(RuntimeError, match=r"current CUDA device \(0\); call torch.cuda.set_device\(1\)"):
        device.resolve_device("cuda:1")
    for bad in ("tpu", "mps", 3.5):
        with pytest.raises(ValueError, match="device must be"):
            device.resolve_device(bad)


def test_a_build_without_cuda_kernels_still_runs_cuda_through_torch(monkeypatch):
    """The device is torch's question; the compiled kernels' absence only moves the ops to torch."""
    fake_cuda(monkeypatch, info={"cuda": False})
    assert device.resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.warns(RuntimeWarning, match="run through torch on cuda.*no CUDA kernels"):
        kern = ops.select_kernels("auto", "cuda")
    assert set(kern.choice.values()) == {"torch"}


# ---------------------------------------------------------------- why the compiled kernels cannot run


@pytest.mark.parametrize("info,count,why,capability,expect", [
    ({"cuda": False}, 1, "", (9, 0), "no CUDA kernels"),
    (DEFAULT_TARGETS, 0, "CUDA driver version is insufficient", (9, 0),
     r"runtime sees no device \(CUDA driver version is insufficient\)"),
    (DEFAULT_TARGETS, 1, "", (7, 5), r"sm_75 .*SASS for sm_80, sm_89, sm_90a and PTX for compute_90"),
    ({"cuda": True, "cuda_sass": ["sm_90a"], "cuda_ptx": []}, 1, "", (10, 0), r"sm_100 .*SASS for sm_90a and no PTX"),
])
def test_custom_unavailable_names_the_reason(monkeypatch, info, count, why, capability, expect):
    fake_cuda(monkeypatch, info=info, count=count, why=why, capability=capability)
    reason = ops.custom_unavailable("cuda")
    assert reason is not None
    assert re.search(expect, reason), reason


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)])
def test_default_targets_cover_ampere_to_blackwell(monkeypatch, capability):
    """sm_80/89/90a machine code, and compute_90 PTX that newer GPUs JIT-compile."""
    fake_cuda(monkeypatch, capability=capability)
    assert ops.custom_unavailable("cuda") is None
    assert set(ops.select_kernels("auto", "cuda").choice.values()) == {"custom"}


def test_the_cpu_always_has_the_compiled_kernels():
    assert ops.custom_unavailable("cpu") is None
    assert "not on meta" in ops.custom_unavailable("meta")


# ---------------------------------------------------------------- choosing


def test_auto_falls_back_per_device_with_one_warning(monkeypatch):
    fake_cuda(monkeypatch, capability=(7, 5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kern = ops.select_kernels("auto", "cuda")
    assert len(caught) == 1 and "sm_75" in str(caught[0].message)
    assert set(kern.choice.values()) == {"torch"}
    assert kern.attention is ops.native.attention and kern.remask_ is ops.native.remask_


def test_explicit_custom_that_cannot_run_raises_naming_the_families(monkeypatch):
    fake_cuda(monkeypatch, capability=(12, 0), info={"cuda": True, "cuda_sass": ["sm_90a"], "cuda_ptx": []})
    with pytest.raises(RuntimeError, match=r"kernels='custom'.*cannot run on cuda.*sm_120"):
        ops.select_kernels("custom", "cuda")
    with pytest.raises(RuntimeError, match=r"of remask cannot run on cuda"):
        ops.select_kernels("remask=custom", "cuda")
    with warnings.catch_warnings(record=True) as caught:        # torch asked for: nothing to say
        warnings.simplefilter("always")
        assert set(ops.select_kernels("torch", "cuda").choice.values()) == {"torch"}
    assert not caught


def test_per_family_spec():
    kern = ops.select_kernels(" attention=torch , remask=custom", "cpu")
    assert kern.choice["attention"] == "torch" and kern.choice["remask"] == "custom"
    assert all(kern.choice[f] == "custom" for f in ops.FAMILIES if f != "attention")   # auto on the CPU
    assert kern.attention is ops.native.attention and kern.remask_ is ops.remask_ and kern.rmsnorm is ops.rmsnorm
    assert kern.int4_linear is ops.int4_linear and kern.fp8_linear is ops.fp8_linear
    assert ops.select_kernels(kern.describe(), "cpu").choice == kern.choice
    assert ops.select_kernels("quant=torch,fp8=torch").int8_linear is ops.native.int8_linear


@pytest.mark.parametrize("spec,expect", [
    ("fast", "bad part: 'fast'"), ("attention=gpu", "bad part: 'attention=gpu'"),
    ("attn=torch", "bad part: 'attn=torch'"), ("", "bad part: ''"), ("attention=torch,", "bad part: ''"),
    (3, "must be a string"),
])
def test_bad_specs_name_the_problem(spec, expect):
    with pytest.raises(ValueError, match=expect):
        ops.select_kernels(spec, "cpu")


def test_environment_variable_is_the_default_and_an_argument_wins(monkeypatch):
    monkeypatch.setenv("ILLADA_KERNELS", "rmsnorm=torch")
    assert ops.select_kernels(None, "cpu").choice["rmsnorm"] == "torch"
    assert ops.select_kernels("custom", "cpu").choice["rmsnorm"] == "custom"
    monkeypatch.setenv("ILLADA_KERNELS", "bogus")
    with pytest.raises(ValueError, match="ILLADA_KERNELS='bogus'"):
        ops.select_kernels(None, "cpu")
    monkeypatch.delenv("ILLADA_KERNELS")
    assert set(ops.select_kernels(None, "cpu").choice.values()) == {"custom"}


# ---------------------------------------------------------------- the engine


def test_engine_takes_the_choice_and_mixed_kernels_match_the_reference(tmp_path):
    write_checkpoint(str(tmp_path), "illada")
    eng = Engine.from_pretrained(tmp_path, kernels="attention=torch,remask=torch,embedding=custom")
    assert eng.kernels is eng.model.kernels
    assert eng.kernels.choice["attention"] == "torch" and eng.kernels.choice["embedding"] == "custom"
    prompt = random_prompt(eng.cfg, 2, 6, seed=4)
    out = eng.generate(prompt, gen_length=16, block_length=8, steps=16, temperature=0.5, seed=3)
    ref = reference.ReferenceModel(eng.cfg, load_state_dict(str(tmp_path), eng.cfg))
    want, nfe = reference.generate(ref, prompt, mask_id=eng.cfg.mask_token_id, steps=16, gen_length=16,
                                   block_length=8, temperature=0.5, seed=3)
    assert torch.equal(out.sequences, want) and out.nfe == nfe
    with pytest.raises(ValueError, match="bad part"):
        Engine.from_pretrained(tmp_path, kernels="attention=nope")
