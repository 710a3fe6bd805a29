"""Where the engine runs: "cpu", or "cuda[:N]" when torch can run there.

Asking for CUDA where torch sees no device (or an index past the last one) raises RuntimeError
naming the reason. Whether the compiled CUDA kernels can run there too is the kernel choice's
question (ops/kernels.py): where they cannot, "auto" runs the torch twins and says why.

Placement of data (see Engine): weights, RoPE tables, the canvas and every per-step
buffer live on the engine's device; inputs may come from anywhere and are moved there;
token results (sequences, stream events, infills) and scores come back on the CPU;
Engine.logits stays on the device.
"""
from __future__ import annotations

from typing import List, Optional

import torch


def cuda_unavailable_reasons(index: Optional[int] = None) -> List[str]:
    """Why torch cannot run on CUDA device `index` (current device when None); [] when it can."""
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        return [f"torch sees no CUDA device ({build})"]
    if index is not None and index >= torch.cuda.device_count():
        return [f"device index {index} is out of range ({torch.cuda.device_count()} devices)"]
    return []


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
        # The compiled kernels launch on the current device of the extension's own CUDA runtime,
        # which follows the thread's current device: other devices are reached through set_device.
        raise RuntimeError(f"device {str(device)!r}: illada_rt runs on the current CUDA device ({current}); "
                           f"call torch.cuda.set_device({dev.index}) first, then use device='cuda'")
    return torch.device("cuda", current)
