"""The extension imports without a GPU and says what it was built with; which GPUs its targets run on."""
import os
import shutil

import pytest

from illada_rt import build_info, ops
from illada_rt.ops.targets import build_targets, code_for

DEFAULT_SASS = ["sm_80", "sm_89", "sm_90a"]
DEFAULT_PTX = ["compute_90"]


def test_build_info_fields():
    info = build_info()
    assert {"cuda", "cuda_archs", "cuda_sass", "cuda_ptx", "nvcc_version", "cxx_compiler", "openmp"} <= set(info)
    assert all(isinstance(t, str) for t in info["cuda_sass"] + info["cuda_ptx"])
    if not info["cuda"]:
        assert info["cuda_sass"] == [] and info["cuda_ptx"] == []


@pytest.mark.skipif(os.environ.get("ILLADA_CPU_ONLY") == "1" or not (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")),
                    reason="no nvcc on this machine: a CPU-only build is expected")
def test_cuda_sources_compiled_where_nvcc_exists():
    info = build_info()
    assert info["cuda"] is True
    assert build_targets(info) == (info["cuda_sass"], info["cuda_ptx"])
    if os.environ.get("ILLADA_CUDA_ARCHS"):
        assert info["cuda_sass"] or info["cuda_ptx"]
    else:
        # SASS for A100 / L40 / H100, PTX that sm_100 and sm_120 GPUs JIT-compile.
        assert info["cuda_sass"] == DEFAULT_SASS and info["cuda_ptx"] == DEFAULT_PTX
        assert info["cuda_archs"] == "80-real,89-real,90a-real,90-virtual"


def test_cuda_devices_reports_without_crashing():
    count, reason = ops.cuda_devices()
    assert isinstance(count, int) and isinstance(reason, str)
    if count == 0:
        assert reason.strip(), "no device and no reason given"
    else:
        assert count > 0 and reason == ""


@pytest.mark.parametrize("capability, runs", [
    ((7, 5), False),   # Turing: older than every target
    ((8, 0), True),    # A100: sm_80
    ((8, 6), True),    # RTX 30xx / A10: sm_80 SASS, same major
    ((8, 7), True),    # Orin: sm_80 SASS
    ((8, 9), True),    # L40 / RTX 40xx: sm_89
    ((9, 0), True),    # H100 / H200: sm_90a
    ((10, 0), True),   # B200: JIT from compute_90 PTX
    ((12, 0), True),   # RTX 50xx: JIT from compute_90 PTX
])
def test_default_build_runs_on(capability, runs):
    reason = code_for(capability, DEFAULT_SASS, DEFAULT_PTX)
    assert (reason is None) == runs
    if not runs:
        assert reason == ("this GPU is sm_75 (compute capability 7.5); this build of illada_rt._C has SASS for "
                          "sm_80, sm_89, sm_90a and PTX for compute_90; rebuild with ILLADA_CUDA_ARCHS=75 "
                          "(pip install -e .) or use kernels='torch'")


@pytest.mark.parametrize("capability", [(9, 0), (8, 0), (8, 9), (10, 0), (12, 0)])
def test_sass_only_build_without_ptx(capability):
    # 80-real;89-real;90a-real: nothing to JIT, so only 8.x and exactly 9.0 run.
    reason = code_for(capability, DEFAULT_SASS, [])
    assert (reason is None) == (capability[0] in (8, 9))
    if reason is not None:
        assert "and no PTX" in reason and f"ILLADA_CUDA_ARCHS={capability[0]}{capability[1]}" in reason


@pytest.mark.parametrize("capability, runs", [((9, 0), True), ((8, 9), False), ((10, 0), False), ((12, 0), False)])
def test_arch_specific_build_runs_on_its_capability_alone(capability, runs):
    # ILLADA_CUDA_ARCHS=90a: sm_90a SASS and compute_90a PTX, neither forward-compatible.
    reason = code_for(capability, ["sm_90a"], ["compute_90a"])
    assert (reason is None) == runs
    if not runs:
        assert f"sm_{capability[0]}{capability[1]}" in reason
        assert "SASS for sm_90a and PTX for compute_90a" in reason


@pytest.mark.parametrize("target, capability, runs", [
    ("sm_86", (8, 6), True), ("sm_86", (8, 9), True), ("sm_86", (8, 0), False), ("sm_86", (9, 0), False),
    ("sm_100a", (10, 0), True), ("sm_100a", (10, 3), False),
    ("sm_100f", (10, 0), True), ("sm_100f", (10, 3), True), ("sm_100f", (12, 0), False), ("sm_103f", (10, 0), False),
    ("sm_120", (12, 0), True), ("sm_120", (12, 1), True), ("sm_120", (10, 0), False),
    ("compute_80", (7, 5), False), ("compute_80", (8, 0), True), ("compute_80", (12, 0), True),
    ("compute_100a", (10, 0), True), ("compute_100a", (10, 3), False), ("compute_100a", (12, 0), False),
    ("compute_100f", (10, 3), True), ("compute_100f", (12, 0), False),
])
def test_compatibility_rules(target, capability, runs):
    sass, ptx = ([target], []) if target.startswith("sm_") else ([], [target])
    assert (code_for(capability, sass, ptx) is None) == runs


def test_cpu_only_build_has_no_code_for_any_gpu():
    sass, ptx = build_targets({"cuda": False, "cuda_sass": [], "cuda_ptx": []})
    assert (sass, ptx) == ([], [])
    reason = code_for((9, 0), sass, ptx)
    assert "sm_90" in reason and "no CUDA kernels" in reason and "kernels='torch'" in reason


def test_build_targets_from_build_info():
    info = {"cuda": True, "cuda_sass": DEFAULT_SASS, "cuda_ptx": DEFAULT_PTX}
    assert build_targets(info) == (DEFAULT_SASS, DEFAULT_PTX)
    assert build_targets({"cuda": True}) == ([], [])
    sass, ptx = build_targets(build_info())   # the real extension's own lists parse
    for capability in ((7, 5), (8, 0), (9, 0), (12, 0)):
        code_for(capability, sass, ptx)


def test_unreadable_target_is_an_error():
    with pytest.raises(ValueError, match="not a CUDA target"):
        code_for((9, 0), ["90a"], [])
