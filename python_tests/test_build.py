"""The extension imports without a GPU and says what it was built with."""
import os
import shutil

import pytest

from illada_rt import build_info, ops


def test_build_info_fields():
    info = build_info()
    assert {"cuda", "cuda_archs", "nvcc_version", "cxx_compiler", "openmp"} <= set(info)


@pytest.mark.skipif(os.environ.get("ILLADA_CPU_ONLY") == "1" or not (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")),
                    reason="no nvcc on this machine: a CPU-only build is expected")
def test_cuda_sources_compiled_where_nvcc_exists():
    info = build_info()
    assert info["cuda"] is True
    for arch in ("80", "89", "90a"):
        assert arch in info["cuda_archs"].split(",") or os.environ.get("ILLADA_CUDA_ARCHS")


def test_cuda_devices_reports_without_crashing():
    count, reason = ops.cuda_devices()
    assert count >= 0
    if count == 0:
        assert reason
