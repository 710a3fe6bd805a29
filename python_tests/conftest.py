import os
import sys

import pytest

# python_tests/ itself on sys.path, so that tests in every subfolder import its helper modules
# (checkpoints, prompts, remask_steps, gptq_checkpoints, cuda_engines) by name
sys.path.insert(0, os.path.dirname(__file__))
from checkpoints import write_checkpoint  # noqa: E402

from illada_rt import Engine, ModelConfig, ops  # noqa: E402
from illada_rt.loading import load_state_dict  # noqa: E402
from illada_rt.reference import ReferenceModel  # noqa: E402

KERNEL_IMPLS = ("custom", "torch")


@pytest.fixture(scope="session", params=KERNEL_IMPLS, autouse=True)
def kernel_impl(request):
    """Every test runs once per op implementation: the compiled kernels ("custom") and their torch
    twins ("torch"). ILLADA_KERNELS says which for the whole pass, so engines built anywhere (and
    subprocesses) take it; fixtures that build engines ahead of a test depend on this one."""
    before = os.environ.get(ops.ENV_VAR)
    os.environ[ops.ENV_VAR] = request.param
    yield request.param
    if before is None:
        os.environ.pop(ops.ENV_VAR, None)
    else:
        os.environ[ops.ENV_VAR] = before


@pytest.fixture
def kernels(kernel_impl):
    """The op implementations of this pass (ops.Kernels): kernels.remask_(...), kernels.attention(...)."""
    return ops.Kernels({family: kernel_impl for family in ops.FAMILIES})


@pytest.fixture(scope="session", params=["llada", "illada"])
def checkpoint(request, tmp_path_factory):
    """(layout, model_dir) for each tiny layout, written once per session."""
    path = tmp_path_factory.mktemp(request.param)
    write_checkpoint(str(path), request.param)
    return request.param, str(path)


@pytest.fixture(scope="session")
def layout_dirs(tmp_path_factory):
    """layout -> a float32 checkpoint directory of that tiny layout, written once per session (read only)."""
    out = {}
    for layout in ("llada", "illada"):
        out[layout] = str(tmp_path_factory.mktemp(f"{layout}_dir"))
        write_checkpoint(out[layout], layout)
    return out


@pytest.fixture(scope="session")
def engines(layout_dirs, kernel_impl):
    """layout -> (engine, reference model) in float32 on the CPU, the engine on this pass's kernels."""
    out = {}
    for layout, path in layout_dirs.items():
        cfg = ModelConfig.from_dir(path)
        eng = Engine.from_pretrained(path, kernels=kernel_impl)
        assert set(eng.kernels.choice.values()) == {kernel_impl}
        out[layout] = (eng, ReferenceModel(cfg, load_state_dict(path, cfg)))
    return out
