"""ops.rmsnorm (optionally fused with the residual add) against reference.rms_norm."""
import zlib

import pytest
import torch

from illada_rt import reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 1), (3, 19), (19, 99), (5, 111), (2, 1024),  # [rows, dim]
          (2, 3, 64), (1, 19, 111), (3, 1, 99)]             # [B, L, dim]


def generator(*case):
    """A generator seeded from the test case: fresh inputs per case, reproducible runs."""
    return torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))


def rand(g, shape, dtype, layout, scale=1.0, shift=0.0):
    """Random [..., dim] tensor; layout "strided": a column slice of a wider tensor (last dim contiguous)."""
    if layout == "contiguous":
        return (torch.randn(shape, generator=g) * scale + shift).to(dtype)
    wide = (torch.randn(*shape[:-1], shape[-1] + 7, generator=g) * scale + shift).to(dtype)
    return wide[..., 3: 3 + shape[-1]]


def poisoned(shape, dtype, layout):
    """NaN-filled output; "strided": a column slice of a wider NaN buffer, returned with the buffer."""
    wide = torch.full((*shape[:-1], shape[-1] + 5), float("nan"), dtype=dtype)
    return (wide[..., : shape[-1]] if layout == "strided" else torch.full(shape, float("nan"), dtype=dtype)), wide


def assert_matches(out, x, w, eps):
    """float32: ~1e-5 relative. bf16/fp16: <= 2 ulp of the reference on the same inputs, and
    flash-attention's rule max|out - ref32| <= 2 max|torch_lowprec - ref32| + atol."""
    assert not out.isnan().any()
    expected = reference.rms_norm(x, w, eps)
    if x.dtype == torch.float32:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        return
    ulp = torch.finfo(x.dtype).eps * expected.float().abs().clamp_min(torch.finfo(x.dtype).tiny)
    assert ((out.float() - expected.float()).abs() <= 2 * ulp).all()
    ref32 = reference.rms_norm(x.float(), w.float(), eps)
    err, torch_err = (out.float() - ref32).abs().max(), (expected.float() - ref32).abs().max()
    assert err <= 2 * torch_err + 1e-5, (err, torch_err)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("eps", [1e-5, 1e-6])
@pytest.mark.parametrize("magnitude", ["unit", "small"])
def test_rmsnorm(kernels, dtype, shape, layout, eps, magnitude):
    """magnitude "unit": mean(x^2) about 4, where eps barely moves the output (~1e-6); "small":
    mean(x^2) about 4 eps, where eps moves it by ~10%, so an eps ignored or replaced shows."""
    g = generator(dtype, shape, layout, eps, magnitude)
    size = 1.0 if magnitude == "unit" else eps ** 0.5
    x = rand(g, shape, dtype, layout, scale=2.0 * size, shift=0.5 * size)   # [..., dim]
    w = rand(g, shape[-1:], dtype, "contiguous", scale=0.1, shift=1.0)       # [dim]
    if magnitude == "small":  # the premise: eps / 2 and 2 eps give outputs far outside the tolerance
        for other in (eps / 2, 2 * eps):
            assert not torch.allclose(reference.rms_norm(x.float(), w.float(), other),
                                      reference.rms_norm(x.float(), w.float(), eps), rtol=1e-2, atol=0)
    out, wide = poisoned(shape, dtype, layout)
    result = kernels.rmsnorm(x, w, eps, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert_matches(out, x, w, eps)
    if layout == "strided":  # columns beyond the output slice are not written
        assert wide[..., shape[-1]:].isnan().all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_rmsnorm_residual(kernels, dtype, shape, layout):
    g = generator(dtype, shape, layout, "residual")
    x = rand(g, shape, dtype, layout)                                 # [..., dim] the new branch
    residual = rand(g, shape, dtype, layout, scale=3.0)              # [..., dim] updated in place
    w = rand(g, shape[-1:], dtype, "contiguous", scale=0.1, shift=1.0)
    residual_after = residual + x                                     # in the dtype, as torch rounds it
    x_before = x.clone()
    out, _ = poisoned(shape, dtype, layout)
    kernels.rmsnorm(x, w, 1e-5, residual=residual, out=out)
    assert torch.equal(residual, residual_after)
    assert torch.equal(x, x_before)
    assert_matches(out, residual_after, w, 1e-5)


def test_rmsnorm_allocates_out(kernels):
    x = torch.randn(3, 2, 19)
    w = torch.rand(19) + 0.5
    out = kernels.rmsnorm(x, w, 1e-5)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, reference.rms_norm(x, w, 1e-5), rtol=1e-5, atol=1e-6)


def test_rmsnorm_zero_row_is_finite(kernels):
    # mean(x^2) = 0: eps keeps rsqrt finite, the output is zero.
    x = torch.zeros(2, 19)
    out = kernels.rmsnorm(x, torch.ones(19), 1e-5, out=torch.full_like(x, float("nan")))
    assert torch.equal(out, torch.zeros_like(x))


@pytest.mark.parametrize("bad", [
    dict(out=torch.empty(3, 18)),                        # out shape
    dict(residual=torch.empty(3, 18)),                   # residual shape
    dict(residual=torch.empty(4, 19)),
    dict(w=torch.ones(18)),                              # weight shape
    dict(w=torch.ones(19, dtype=torch.bfloat16)),        # weight dtype
    dict(out=torch.empty(3, 19, dtype=torch.float16)),   # out dtype
    dict(residual=torch.empty(3, 19, dtype=torch.float64)),
    dict(x=torch.ones(3, 19, dtype=torch.int64)),        # not a float dtype
    dict(x=torch.randn(19, 3).t()),                      # last dim not contiguous
])
def test_rmsnorm_bad_input(kernels, bad):
    args = dict(x=torch.randn(3, 19), w=torch.ones(19), residual=None, out=None) | bad
    with pytest.raises(ValueError):
        kernels.rmsnorm(args["x"], args["w"], 1e-5, residual=args["residual"], out=args["out"])
