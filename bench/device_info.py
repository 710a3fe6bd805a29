"""What a result was measured on: device, clocks, power, memory, versions, date.

On CUDA the GPU's name, driver, clocks, power and memory come from nvidia-ml-py
(`import pynvml`, the optional "bench" extra) when it is importable and NVML starts;
otherwise they are recorded as unavailable with the reason, never a crash. torch's own
view of the device (name, capability, SMs, memory) is recorded either way.
"""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from typing import Optional

import torch

from illada_rt import build_info


def _nvml_handle(index: int):
    """(pynvml module, device handle), or (None, reason)."""
    try:
        import pynvml
    except ImportError:
        return None, "pynvml not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception as e:  # NVMLError and its subclasses: no driver, no library, bad index
        return None, f"NVML unavailable: {e}"


def _read(fn, *args):
    try:
        value = fn(*args)
        return value.decode() if isinstance(value, bytes) else value
    except Exception:
        return None


def nvml_snapshot(index: int = 0) -> dict:
    """Clocks (MHz), power (W), temperature (C) and memory in use (GiB) right now."""
    nv, h = _nvml_handle(index)
    if nv is None:
        return dict(nvml=h)
    power = _read(nv.nvmlDeviceGetPowerUsage, h)
    mem = _read(nv.nvmlDeviceGetMemoryInfo, h)
    return dict(sm_clock_mhz=_read(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
                mem_clock_mhz=_read(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM),
                power_draw_w=None if power is None else power / 1e3,
                temperature_c=_read(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
                memory_used_gib=None if mem is None else mem.used / 2 ** 30)


def nvml_info(index: int = 0) -> dict:
    """Static GPU facts from NVML, plus a snapshot; {"nvml": reason} when NVML cannot be used."""
    nv, h = _nvml_handle(index)
    if nv is None:
        return dict(nvml=h)
    limit = _read(nv.nvmlDeviceGetPowerManagementLimit, h)
    mem = _read(nv.nvmlDeviceGetMemoryInfo, h)
    return dict(nvml="ok", name=_read(nv.nvmlDeviceGetName, h), driver=_read(nv.nvmlSystemGetDriverVersion),
                sm_clock_max_mhz=_read(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM),
                mem_clock_max_mhz=_read(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_MEM),
                power_limit_w=None if limit is None else limit / 1e3,
                memory_total_gib=None if mem is None else mem.total / 2 ** 30,
                **nvml_snapshot(index))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(device: torch.device) -> dict:
    """Everything that identifies the measuring setup, as a JSON-ready dict."""
    now = datetime.datetime.now(datetime.timezone.utc)
    info = dict(date=now.date().isoformat(), time_utc=now.strftime("%H:%M:%S"), device=str(device),
                torch=torch.__version__, torch_cuda=torch.version.cuda, python=platform.python_version(),
                extension=build_info(), git=git_commit(), cpu=cpu_model(), cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads())
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    gpu_memory_gib=props.total_memory / 2 ** 30, gpu_index=index, nvml=nvml_info(index))
    return info


def device_slug(info: dict) -> str:
    """A file-name-safe device name: "nvidia-h100-80gb-hbm3", or "cpu"."""
    name = info.get("gpu") or "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"
