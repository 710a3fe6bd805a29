"""The only module that touches the compiled extension ``illada_rt._C``.

Each op checks dtype, device, shape and layout, allocates its output unless one
is given, and passes raw pointers, strides and the current stream to the kernels.
Shapes follow the kernel headers in csrc/include/.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch

# The extension's OpenMP threads sleep, rather than spin, between kernels: torch's own
# thread pool runs the matmuls in between and spinning threads would starve it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    from . import _C
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "illada_rt._C, the compiled extension, is missing or failed to load "
        f"({e}). Build it with `pip install -e .` from the source tree."
    ) from e

_DTYPE_CODES = {
    torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.int64: 3,
    torch.int32: 4, torch.bool: 5, torch.float64: 6,
}
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _arg(t: torch.Tensor, name: str):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    code = _DTYPE_CODES.get(t.dtype)
    if code is None:
        raise ValueError(f"{name}: dtype {t.dtype} is not supported")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: device {t.device} is not supported")
    return _C.TensorArg(t.data_ptr(), code, list(t.shape), list(t.stride()), t.is_cuda)


def _opt(t: Optional[torch.Tensor], name: str):
    return None if t is None else _arg(t, name)


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


def _rows(t: torch.Tensor, name: str) -> torch.Tensor:
    """[..., D] -> a [rows, D] view (no copy); the leading dims must collapse."""
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        raise ValueError(f"{name}: leading dims of shape {tuple(t.shape)} and strides {t.stride()} "
                         "cannot be viewed as rows; pass a contiguous tensor") from None


def build_info() -> dict:
    """What the extension was built with (CUDA, architectures, compilers)."""
    return dict(_C.build_info())


def cuda_devices():
    """(count, reason) of CUDA devices the extension's runtime sees."""
    return tuple(_C.cuda_devices())


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None,
            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """weight * rmsnorm(x) over the last dim. With residual: residual += x first, normalise residual."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    if out.shape != x.shape or (residual is not None and residual.shape != x.shape):
        raise ValueError(f"rmsnorm: shapes differ: x {tuple(x.shape)}, out {tuple(out.shape)}"
                         + ("" if residual is None else f", residual {tuple(residual.shape)}"))
    _C.rmsnorm(_arg(_rows(out, "out"), "out"), _arg(_rows(x, "x"), "x"), _arg(weight, "weight"),
               None if residual is None else _arg(_rows(residual, "residual"), "residual"), float(eps), _stream(x))
    return out


def rope_table(head_dim: int, length: int, theta: float):
    """cos, sin tables [length, head_dim/2] float32, computed as the reference computes its angles."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return freqs.cos().contiguous(), freqs.sin().contiguous()


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, position_start: int = 0) -> torch.Tensor:
    """In-place rotate-half RoPE on x [B, L, H, head_dim] at positions position_start + l."""
    _C.rope(_arg(x, "x"), _arg(cos, "cos"), _arg(sin, "sin"), int(position_start), _stream(x))
    return x


def swiglu(gate: torch.Tensor, up: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """silu(gate) * up over [..., F] (gate and up may be strided views of one [..., 2F] tensor)."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device) if out is None else out
    _C.swiglu(_arg(_rows(out, "out"), "out"), _arg(_rows(gate, "gate"), "gate"), _arg(_rows(up, "up"), "up"),
              _stream(gate))
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None,
              out: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """Bidirectional GQA attention. q [B, Lq, H, D], k/v [B, Lk, Hkv, D], key_mask [B, Lk] bool."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device) if out is None else out
    _C.attention(_arg(out, "out"), _arg(q, "q"), _arg(k, "k"), _arg(v, "v"), _opt(key_mask, "key_mask"),
                 math.nan if scale is None else float(scale), _stream(q))
    return out


def embedding(tokens: torch.Tensor, table: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[..., :] = table[tokens[...], :]: tokens [...] int64, table [V, d] -> [..., d] in the table's dtype.

    CPU: a token outside [0, V) raises. CUDA: nothing is read back (graph-capturable); such a
    token's row is NaN, which the remask non-finite check then reports.
    """
    shape = tuple(tokens.shape) + (table.shape[-1],)
    out = torch.empty(shape, dtype=table.dtype, device=table.device) if out is None else out
    if tuple(out.shape) != shape:
        raise ValueError(f"embedding: out has shape {tuple(out.shape)}, expected {shape}")
    if tokens.dtype != torch.int64:
        raise ValueError(f"embedding: tokens must be int64, got {tokens.dtype}")
    flat = tokens.reshape(-1)  # may be a copy: held here until the kernel has been called
    _C.embedding(_arg(_rows(out, "out"), "out"), _arg(flat, "tokens"), _arg(table, "table"), _stream(table))
    return out


def remask_(logits: torch.Tensor, tokens: torch.Tensor, block_start: int, *, vocab: int, mask_id: int,
            seeds: torch.Tensor, row_offset: torch.Tensor, step: torch.Tensor,
            uncond: Optional[torch.Tensor] = None, cfg_scale: float = 0.0, temperature: float = 0.0,
            remasking: str = "low_confidence", k: Optional[torch.Tensor] = None,
            threshold: Optional[float] = None, x0: Optional[torch.Tensor] = None,
            conf: Optional[torch.Tensor] = None, masks_left: Optional[torch.Tensor] = None,
            workspace: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One denoising step on tokens[:, block_start : block_start + logits.shape[1]], in place.

    logits [B, Lb, >=vocab] are the block rows (uncond: the CFG branch). Exactly one of
    k [B] (top-k transfer) and threshold (confidence rule) is given. Optional outputs:
    x0 [B, Lb] int64, conf [B, Lb] float64, masks_left [B] int64. Returns tokens.

    CUDA: every tensor on the device (k, step, seeds, row_offset included); workspace is
    remask_workspace(B, Lb) (allocated here when None). Non-finite logits do not raise on
    CUDA: they set workspace[0] non-zero (sticky) and nothing is transferred; this call does
    not synchronise to check it.
    """
    if (k is None) == (threshold is None):
        raise ValueError("remask: give exactly one of k (top-k) and threshold")
    if logits.is_cuda and workspace is None and logits.dim() == 3:
        workspace = remask_workspace(logits.shape[0], logits.shape[1], logits.device)
    _C.remask(_arg(logits, "logits"), _opt(uncond, "uncond"), float(cfg_scale), int(vocab),
              _arg(tokens, "tokens"), int(block_start), int(mask_id), float(temperature),
              _arg(seeds, "seeds"), _arg(row_offset, "row_offset"), _arg(step, "step"), str(remasking),
              _opt(k, "k"), 1.0 if threshold is None else float(threshold),
              _opt(x0, "x0"), _opt(conf, "conf"), _opt(masks_left, "masks_left"), _opt(workspace, "workspace"),
              _stream(logits))
    return tokens


def remask_workspace(batch: int, block_len: int, device) -> torch.Tensor:
    """Zeroed CUDA scratch for remask_ on a [batch, block_len] block; element 0 is the error flag."""
    return torch.zeros(-(-_C.remask_workspace_bytes(int(batch), int(block_len)) // 8), dtype=torch.int64,
                       device=device)
