"""Which GPUs a build of illada_rt._C has code for: pure logic over its SASS and PTX targets.

build_info() lists the targets: SASS (machine code, "sm_80", "sm_90a") and PTX (virtual code the
driver JIT-compiles, "compute_90"). NVIDIA's compatibility rules, for a device of compute
capability (major, minor):
  sm_XY     runs where major == X and minor >= Y           (sm_80 runs on 8.0, 8.6, 8.9)
  sm_XYa    runs only on X.Y                               (sm_90a: 9.0 alone; sm_100a: 10.0 alone)
  sm_XYf    runs where major == X and minor >= Y (family)  (sm_100f: 10.0, 10.3)
  compute_XY    JIT-compiles for any (major, minor) >= (X, Y)
  compute_XYa   only for X.Y; compute_XYf for its family, as sm_XYf
The last digit is the minor version: sm_120 is 12.0, sm_86 is 8.6.
"""
from __future__ import annotations

import re
from typing import List, Optional, Tuple

_TARGET = re.compile(r"^(sm|compute)_(\d+)(\d)([af]?)$")


def build_targets(info: dict) -> Tuple[List[str], List[str]]:
    """(sass, ptx) of a build_info() dict: (["sm_80", "sm_89", "sm_90a"], ["compute_90"]) by default,
    ([], []) for a CPU-only build or a dict without the lists."""
    if not info.get("cuda", False):
        return [], []
    return list(info.get("cuda_sass", [])), list(info.get("cuda_ptx", []))


def _runs_on(target: str, capability: Tuple[int, int]) -> bool:
    m = _TARGET.match(target)
    if m is None:
        raise ValueError(f"not a CUDA target: {target!r} (expected sm_XY or compute_XY, with an optional a/f suffix)")
    kind, major, minor, suffix = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    if suffix == "a":
        return capability == (major, minor)
    if suffix == "f" or kind == "sm":
        return capability[0] == major and capability[1] >= minor
    return tuple(capability) >= (major, minor)


def code_for(capability: Tuple[int, int], sass: List[str], ptx: List[str]) -> Optional[str]:
    """None when a build with these targets runs on a device of compute capability `capability`
    (e.g. torch.cuda.get_device_capability()), else one line saying why and what to do."""
    capability = (int(capability[0]), int(capability[1]))
    if any(_runs_on(t, capability) for t in list(sass) + list(ptx)):
        return None
    major, minor = capability
    device = f"this GPU is sm_{major}{minor} (compute capability {major}.{minor})"
    if not sass and not ptx:
        return (f"{device}; this build of illada_rt._C has no CUDA kernels (nvcc was not found at build time, "
                "or ILLADA_CPU_ONLY=1 was set); rebuild with `pip install -e .` where nvcc is on the PATH "
                "or use kernels='torch'")
    has = (f"SASS for {', '.join(sass)}" if sass else "no SASS") + " and " + \
          (f"PTX for {', '.join(ptx)}" if ptx else "no PTX")
    return (f"{device}; this build of illada_rt._C has {has}; rebuild with ILLADA_CUDA_ARCHS={major}{minor} "
            "(pip install -e .) or use kernels='torch'")
