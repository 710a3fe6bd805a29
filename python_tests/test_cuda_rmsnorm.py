"""CUDA rmsnorm against the reference (skipped without a GPU or a CUDA build)."""
import pytest
import torch

from illada_rt import build_info, ops, reference

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and build_info()["cuda"] and ops.cuda_devices()[0] > 0),
                                reason="needs a CUDA device and a CUDA build")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,dim", [(1, 64), (19, 4096), (111, 999), (3, 14336)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_cuda_rmsnorm_matches_reference(dtype, rows, dim, with_residual):
    g = torch.Generator(device="cuda").manual_seed(rows * dim)
    x = torch.randn(rows, dim, device="cuda", generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(dim, device="cuda", generator=g)).to(dtype)
    res = torch.randn(rows, dim, device="cuda", generator=g).to(dtype) if with_residual else None
    src32 = (res.float() + x.float()) if with_residual else x.float()
    want32 = reference.rms_norm(src32, w.float(), 1e-5)
    want_low = reference.rms_norm(src32.to(dtype), w, 1e-5).float()
    out = torch.full_like(x, float("nan"))
    res_before = None if res is None else res.clone()
    ops.rmsnorm(x, w, 1e-5, residual=res, out=out)
    torch.cuda.synchronize()
    assert not out.isnan().any()
    err, torch_err = (out.float() - want32).abs().max(), (want_low - want32).abs().max()
    assert err <= 2 * torch_err + 1e-5
    if with_residual:
        torch.testing.assert_close(res, (res_before.float() + x.float()).to(dtype), rtol=0, atol=0)
