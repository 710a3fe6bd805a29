"""Which implementation runs each op family: the compiled kernels ("custom") or their torch twins.

    kernels = select_kernels("auto", torch.device("cuda"))
    kernels.attention(q, k, v, key_mask)      # the chosen implementation, illada_rt.ops' signature
    kernels.choice                            # {"embedding": "custom", ..., "remask": "torch"}

A spec is one word for every family ("auto", "custom" or "torch") or a comma list of
family=word ("attention=torch,remask=custom"; a family not named gets "auto"). With no spec,
the environment variable ILLADA_KERNELS gives it (default "auto"). "auto" takes the compiled
kernels where the extension has code for the device and the torch twin otherwise, saying why in
one warning line; an explicit "custom" that cannot run raises RuntimeError naming the reason.
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, Mapping, Optional, Tuple, Union

import torch

from . import core, native, quant, targets

ENV_VAR = "ILLADA_KERNELS"
CHOICES = ("auto", "custom", "torch")

# family -> the ops it holds (names in illada_rt.ops and in ops.native)
FAMILIES: Dict[str, Tuple[str, ...]] = {
    "embedding": ("embedding",),
    "rmsnorm": ("rmsnorm",),
    "rope": ("rope_",),
    "swiglu": ("swiglu",),
    "attention": ("attention",),
    "remask": ("remask_",),
    "quant": ("dequantize_int8", "dequantize_int4", "int8_linear", "int4_linear"),
    "fp8": ("quantize_fp8_per_token", "rmsnorm_quant_fp8", "fp8_linear", "cast_to_fp8"),
}

_COMPILED = {name: getattr(core if hasattr(core, name) else quant, name)
             for names in FAMILIES.values() for name in names}
_TWINS = {name: getattr(native, name) for names in FAMILIES.values() for name in names}


def parse_spec(spec: str, source: str = "kernels") -> Dict[str, str]:
    """family -> "auto" | "custom" | "torch" for every family; ValueError naming what is wrong."""
    if not isinstance(spec, str):
        raise ValueError(f"{source} must be a string such as 'auto', 'torch' or 'attention=torch', got {spec!r}")
    text = spec.strip()
    if text in CHOICES:
        return {family: text for family in FAMILIES}
    choice = {family: "auto" for family in FAMILIES}
    for part in text.split(","):
        family, eq, word = (s.strip() for s in part.partition("="))
        if not eq or family not in FAMILIES or word not in CHOICES:
            raise ValueError(f"{source}={spec!r}: expected one of {CHOICES} or a comma list of family=word "
                             f"with families {tuple(FAMILIES)} and words {CHOICES} (bad part: {part.strip()!r})")
        choice[family] = word
    return choice


def custom_unavailable(device: Union[str, torch.device]) -> Optional[str]:
    """Why the compiled kernels cannot run on `device`, or None when they can."""
    device = torch.device(device)
    if device.type == "cpu":
        return None                                   # the CPU kernels are compiled into every build
    if device.type != "cuda":
        return f"the compiled kernels run on the CPU and on CUDA devices, not on {device.type}"
    info = core.build_info()
    if not info.get("cuda", False):
        return ("this build of illada_rt._C has no CUDA kernels (nvcc was not found at build time, or "
                "ILLADA_CPU_ONLY=1 was set)")
    count, why = core.cuda_devices()
    if count == 0:
        return f"the extension's CUDA runtime sees no device ({why or 'device count 0'})"
    capability = torch.cuda.get_device_capability(device if device.index is not None else None)
    return targets.code_for(tuple(capability), *targets.build_targets(info))


class Kernels:
    """The op implementations one model runs: an attribute per op of FAMILIES, each the compiled
    op or its torch twin as `choice` (family -> "custom" | "torch") says."""

    def __init__(self, choice: Mapping[str, str]):
        if set(choice) != set(FAMILIES) or not set(choice.values()) <= {"custom", "torch"}:
            raise ValueError(f"Kernels needs 'custom' or 'torch' for each of {tuple(FAMILIES)}, got {dict(choice)}")
        self.choice = dict(choice)
        for family, impl in self.choice.items():
            table = _COMPILED if impl == "custom" else _TWINS
            for name in FAMILIES[family]:
                setattr(self, name, table[name])

    def describe(self) -> str:
        """The choice as a spec select_kernels accepts: "custom", "torch", or family=impl for each."""
        impls = set(self.choice.values())
        if len(impls) == 1:
            return impls.pop()
        return ",".join(f"{family}={impl}" for family, impl in self.choice.items())

    def __repr__(self) -> str:
        return f"Kernels({self.describe()})"


def select_kernels(spec: Optional[str] = None, device: Union[str, torch.device] = "cpu") -> Kernels:
    """Kernels for `device` from a spec (None: $ILLADA_KERNELS, else "auto"); see the module docstring."""
    source = "kernels"
    if spec is None:
        spec, source = os.environ.get(ENV_VAR, "auto") or "auto", ENV_VAR
    wanted = parse_spec(spec, source)
    device = torch.device(device)
    reason = custom_unavailable(device)
    explicit = sorted(f for f, word in wanted.items() if word == "custom")
    if reason and explicit:
        raise RuntimeError(f"{source}={spec!r}: the compiled kernels of {', '.join(explicit)} cannot run on "
                           f"{device}: {reason}")
    resolved = {f: ("torch" if reason else "custom") if word == "auto" else word for f, word in wanted.items()}
    fallen = [f for f, word in wanted.items() if word == "auto" and resolved[f] == "torch"]
    if fallen:
        warnings.warn(f"illada_rt: {', '.join(fallen)} run through torch on {device}: {reason}",
                      RuntimeWarning, stacklevel=2)
    return Kernels(resolved)
