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


# ------------------------------------------------------------------ re-installs (setup.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _setup_module():
    """setup.py's helpers, imported without building (its setup() runs only as __main__)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("illada_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_cache(build_dir, cmake, ninja):
    os.makedirs(build_dir, exist_ok=True)
    with open(os.path.join(build_dir, "CMakeCache.txt"), "w", encoding="utf-8") as f:
        f.write(f"# This is the CMakeCache file.\nCMAKE_BUILD_TYPE:STRING=Release\n"
                f"CMAKE_MAKE_PROGRAM:FILEPATH={ninja}\nCMAKE_COMMAND:INTERNAL={cmake}\n"
                "ILLADA_CUDA_ARCHS:STRING=\n")


def test_a_cache_naming_a_deleted_build_environment_is_forgotten(tmp_path):
    """pip deletes its isolated build environment (cmake, ninja) after an install; the build tree's
    CMakeCache.txt still names them, and the next install's configure failed on the missing ninja."""
    setup = _setup_module()
    gone = tmp_path / "pip-build-env-1234" / "overlay" / "bin"
    build = str(tmp_path / "build")
    _write_cache(build, str(gone / "cmake"), str(gone / "ninja"))
    assert setup.stale_cache_entries(build) == [("CMAKE_MAKE_PROGRAM", str(gone / "ninja")),
                                                ("CMAKE_COMMAND", str(gone / "cmake"))]
    assert setup.forget_stale_cache(build)
    assert not os.path.exists(os.path.join(build, "CMakeCache.txt"))
    assert setup.stale_cache_entries(build) == [] and setup.forget_stale_cache(build) == []   # no cache: nothing


def test_a_cache_naming_present_tools_is_kept(tmp_path):
    setup = _setup_module()
    tool = tmp_path / "bin" / "ninja"
    tool.parent.mkdir()
    tool.write_text("")
    build = str(tmp_path / "build")
    _write_cache(build, str(tool), str(tool))
    assert setup.forget_stale_cache(build) == []
    assert os.path.isfile(os.path.join(build, "CMakeCache.txt"))


def test_numpy_is_a_dependency():
    """torch imports numpy where it can and prints "Failed to initialize NumPy" where it cannot; torch
    does not require it, so a fresh install without it printed that on the first run."""
    import re
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        deps = re.search(r"^dependencies = \[(.*?)\]", f.read(), re.M | re.S).group(1)
    assert re.search(r'"numpy[<>=!~ ,\d.]*"', deps), deps


@pytest.mark.skipif(os.environ.get("ILLADA_TEST_REINSTALL") != "1",
                    reason="minutes: builds the extension three times (set ILLADA_TEST_REINSTALL=1)")
def test_every_reinstall_builds(tmp_path):
    """`pip install -e .`, then `pip install -e ".[serve]"` (a new isolated build environment), then
    `pip install --no-build-isolation -e .`, each in a copy of the tree, in a fresh venv (dependencies
    are not installed: the build is what is tested)."""
    import subprocess
    import venv

    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(src / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), src / name)
    venv.create(tmp_path / "venv", with_pip=True)
    pip = [str(tmp_path / "venv" / "bin" / "python"), "-m", "pip", "install", "--no-deps"]
    env = dict(os.environ, ILLADA_CPU_ONLY="1", PATH=f"{tmp_path / 'venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(pip + ["setuptools>=68", "pybind11>=2.12", "cmake>=3.24", "ninja", "wheel"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    for args in (["-e", "."], ["-e", ".[serve]"], ["--no-build-isolation", "-e", "."], ["-e", "."]):
        r = subprocess.run(pip + args, cwd=src, capture_output=True, text=True, env=env)
        assert r.returncode == 0, f"pip install {' '.join(args)}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
        built = [n for n in os.listdir(src / "illada_rt") if n.startswith("_C") and n.endswith(".so")]
        assert len(built) == 1, built
