"""What the CUDA engine tests share (decoding/test_cuda_engine.py, serving/test_cuda_serving.py): the
head_dim-64 checkpoint layouts, whether this pass's kernels run on CUDA (skipping the test where not),
and prompts made on the device."""
from typing import Optional

import pytest
import torch

from illada_rt import ops

# head_dim 64: MHA with an untied head, and GQA (2 query heads per KV head) with a tied one
CUDA_LAYOUTS = {"llada": dict(d_model=128, n_heads=2, n_kv_heads=2),
                "illada": dict(d_model=128, n_heads=2, n_kv_heads=1)}


def cuda_unavailable(kernels: str) -> Optional[str]:
    """Why the engine cannot run on CUDA here with these kernels ("custom" | "torch"); None where it can."""
    if not torch.cuda.is_available():
        return "needs a CUDA device (torch sees none)"
    if kernels == "custom":
        why = ops.custom_unavailable("cuda")
        if why is not None:
            return f"the compiled CUDA kernels cannot run: {why}"
    return None


def cuda_pass(kernel_impl: str) -> str:
    """This pass's kernels where they run on CUDA; skips the calling test or fixture otherwise."""
    why = cuda_unavailable(kernel_impl)
    if why is not None:
        pytest.skip(why)
    return kernel_impl


def device_prompt(cfg, batch, length, seed):
    """Prompt tokens [batch, length] made on the GPU, avoiding the mask id."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=g, device="cuda")
    return torch.where(ids == cfg.mask_token_id, (ids + 1) % cfg.vocab_size, ids)
