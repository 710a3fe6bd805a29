"""CUDA rmsnorm against the reference, for both implementations of the pass (the `kernels` fixture:
the compiled kernel, then the torch twin, on device tensors); skipped without a GPU or a CUDA build.

Rule (flash-attention's): max|out - ref32| <= 2 max|torch_lowprec - ref32| + 1e-5, ref32 the
reference in float32 on the same inputs, torch_lowprec the reference rounded to the dtype.
"""
import pytest
import torch

from illada_rt import build_info, ops, reference

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (torch.cuda.is_available() and build_info()["cuda"] and ops.cuda_devices()[0] > 0),
                                 reason="needs a CUDA device and a CUDA build")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,dim", [(1, 64), (19, 4096), (111, 999), (3, 14336)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_cuda_rmsnorm_matches_reference(kernels, dtype, rows, dim, with_residual):
    g = torch.Generator(device="cuda").manual_seed(rows * dim)
    x = torch.randn(rows, dim, device="cuda", generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(dim, device="cuda", generator=g)).to(dtype)
    res = torch.randn(rows, dim, device="cuda", generator=g).to(dtype) if with_residual else None
    src32 = (res.float() + x.float()) if with_residual else x.float()
    want32 = reference.rms_norm(src32, w.float(), 1e-5)
    want_low = reference.rms_norm(src32.to(dtype), w, 1e-5).float()
    out = torch.full_like(x, float("nan"))
    res_before = None if res is None else res.clone()
    result = kernels.rmsnorm(x, w, 1e-5, residual=res, out=out)
    torch.cuda.synchronize()
    assert result.data_ptr() == out.data_ptr() and not out.isnan().any()
    err, torch_err = (out.float() - want32).abs().max(), (want_low - want32).abs().max()
    assert err <= 2 * torch_err + 1e-5
    if with_residual:
        torch.testing.assert_close(res, (res_before.float() + x.float()).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_cuda_rmsnorm_eps_matters(kernels, dtype, eps):
    """Rows whose mean square is a few eps: the output depends on eps (halving or doubling it moves
    the result by over 1%), so a kernel that drops or fixes eps fails here."""
    g = torch.Generator(device="cuda").manual_seed(7)
    x = (torch.randn(5, 256, device="cuda", generator=g) * (2 * eps) ** 0.5).to(dtype)
    w = torch.ones(256, device="cuda", dtype=dtype)
    want = reference.rms_norm(x.float(), w.float(), eps)
    for other in (eps / 2, eps * 2):
        assert (reference.rms_norm(x.float(), w.float(), other) - want).abs().max() > 0.01 * want.abs().max()
    out = kernels.rmsnorm(x, w, eps)
    torch.cuda.synchronize()
    torch.testing.assert_close(out.float(), want, rtol=1e-2 if dtype == torch.bfloat16 else 1e-4, atol=1e-6)
