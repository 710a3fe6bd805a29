"""The shared engine on CUDA: batched requests get the tokens of Engine.generate alone (float32).

Skips without a CUDA device and a CUDA build.
"""
import pytest
import torch

from checkpoints import write_checkpoint
from illada_rt import Engine, SyncEngine
from test_cuda_engine import CUDA_LAYOUTS, needs_cuda
from test_serving import _requests


@needs_cuda
@pytest.mark.parametrize("layout", sorted(CUDA_LAYOUTS))
@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.7), dict(threshold=0.05), dict(cfg_scale=1.0)])
def test_cuda_batched_requests_match_alone(tmp_path, layout, settings):
    torch.backends.cuda.matmul.allow_tf32 = False
    write_checkpoint(str(tmp_path), layout, **CUDA_LAYOUTS[layout])
    eng = Engine.from_pretrained(str(tmp_path), device="cuda")
    reqs = _requests(eng.cfg, 6, seed=4, **settings)
    with SyncEngine(eng, max_batch_size=3) as seng:
        streams = [seng.stream(ids, **opts) for ids, opts in reqs]
        outs = [list(s)[-1].output for s in streams]
    for out, (ids, opts) in zip(outs, reqs):
        assert out.tokens == eng.generate(ids[None], **opts).answers[0].tolist()
