"""The shared engine on CUDA: batched requests get the tokens of Engine.generate alone (float32).

On the GPU a batched row's matmuls and attention run at other shapes than alone (padding, more
rows), and cuBLAS may pick other kernels, so float rounding differs: an exact confidence tie
can break the other way. The test asks for near-total agreement, not bit equality (the CPU test,
test_serving.py, asks for equality). It runs once per op implementation (conftest.kernel_impl),
with prompts made on the device; it skips where that pass cannot run on CUDA (test_cuda_engine.py).
"""
import pytest
import torch

from checkpoints import write_checkpoint
from illada_rt import Engine, SyncEngine
from cuda_engines import CUDA_LAYOUTS, cuda_pass, device_prompt
from prompts import varied_requests

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("layout", sorted(CUDA_LAYOUTS))
@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.7), dict(threshold=0.05), dict(cfg_scale=1.0)])
def test_cuda_batched_requests_match_alone(tmp_path, layout, settings, kernel_impl):
    kernels = cuda_pass(kernel_impl)
    torch.backends.cuda.matmul.allow_tf32 = False
    write_checkpoint(str(tmp_path), layout, **CUDA_LAYOUTS[layout])
    eng = Engine.from_pretrained(str(tmp_path), device="cuda", kernels=kernels)
    assert set(eng.kernels.choice.values()) == {kernels}
    # test_serving's mix of lengths and options, with each prompt made on the device
    reqs = [(device_prompt(eng.cfg, 1, len(ids), seed=100 + i)[0], opts)
            for i, (ids, opts) in enumerate(varied_requests(eng.cfg, 6, seed=4, **settings))]
    with SyncEngine(eng, max_batch_size=3) as seng:
        streams = [seng.stream(ids, **opts) for ids, opts in reqs]
        outs = [list(s)[-1].output for s in streams]
    same = total = 0
    for out, (ids, opts) in zip(outs, reqs):
        alone = eng.generate(ids[None], **opts).answers[0].tolist()
        same += sum(a == b for a, b in zip(out.tokens, alone))
        total += len(alone)
    assert same >= 0.97 * total, f"{same}/{total} tokens agree ({kernels} kernels)"
