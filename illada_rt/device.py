"""Where the engine runs: "cpu", or "cuda[:N]" when the CUDA kernels can run there.

There is no silent fallback: asking for CUDA where it cannot run raises RuntimeError
naming every reason (no CUDA build of the extension, no device visible to torch, no
device visible to the extension's own CUDA runtime, an index past the last device).

Placement of data (see Engine): weights, RoPE tables, the canvas and every per-step
buffer live on the engine's device; inputs may come from anywhere and are moved there;
token results (sequences, stream events, infills) and scores come back on the CPU;
Engine.logits stays on the device.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from . import ops


def cuda_unavailable_reasons(index: Optional[int] = None) -> List[str]:
    """Why the CUDA kernels cannot run on device `index` (current device when None); [] when they can."""
    reasons = []
    if not ops.build_info().get("cuda", False):
        reasons.append("this build of illada_rt._C has no CUDA kernels (nvcc was not found at build time, or "
                       "ILLADA_CPU_ONLY=1 was set); rebuild with `pip install -e .` where nvcc is on the PATH")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        reasons.append(f"torch sees no CUDA device ({build})")
    count, why = ops.cuda_devices()
    if count == 0 and ops.build_info().get("cuda", False):
        reasons.append(f"the extension's CUDA runtime sees no device ({why or 'device count 0'})")
    if not reasons and index is not None and index >= min(count, torch.cuda.device_count()):
        reasons.append(f"device index {index} is out of range ({min(count, torch.cuda.device_count())} devices)")
    return reasons


def resolve_device(device) -> torch.device:
    """torch.device for "cpu" or a usable "cuda[:N]"; ValueError for other kinds, RuntimeError when
    CUDA is asked for but cannot run."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r} ({e})") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    reasons = cuda_unavailable_reasons(dev.index)
    if reasons:
        raise RuntimeError(f"device {str(device)!r} is unavailable: " + "; ".join(reasons))
    current = torch.cuda.current_device()
    if dev.index is not None and dev.index != current:
        # The kernels launch on the current device of the extension's own CUDA runtime, which
        # follows the thread's current device: other devices are reached through set_device.
        raise RuntimeError(f"device {str(device)!r}: illada_rt runs on the current CUDA device ({current}); "
                           f"call torch.cuda.set_device({dev.index}) first, then use device='cuda'")
    return torch.device("cuda", current)
