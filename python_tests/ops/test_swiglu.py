"""ops.swiglu against F.silu(gate) * up (torch in the same dtype; float64 for float32)."""
import zlib

import pytest
import torch
import torch.nn.functional as F


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 1), (3, 19), (19, 99), (7, 111), (2, 1024), (2, 3, 19), (1, 19, 99)]  # [..., F]


def generator(*case):
    return torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))


def assert_matches(out, gate, up):
    """bf16/fp16: at most 1 ulp from torch's F.silu(gate) * up in the dtype (both round silu, then
    the product). float32: torch's vectorised exp and the kernel's expf differ by an ulp or two, so
    compare with the float64 truth: within 2 eps relative, as torch itself is (~1.5 eps)."""
    assert out.dtype == gate.dtype and not out.isnan().any()
    finfo = torch.finfo(out.dtype)
    if out.dtype == torch.float32:
        expected = F.silu(gate.double()) * up.double()
        ulps = 2
    else:
        expected = (F.silu(gate) * up).double()
        ulps = 1
    allowed = ulps * finfo.eps * expected.abs().clamp_min(finfo.tiny)
    assert ((out.double() - expected).abs() <= allowed).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["fused", "separate"])
def test_swiglu(kernels, dtype, shape, layout):
    g = generator(dtype, shape, layout)
    F_ = shape[-1]
    if layout == "fused":  # gate, up: strided halves of one [..., 2F] projection
        h = (torch.randn(*shape[:-1], 2 * F_, generator=g) * 3).to(dtype)
        gate, up = h[..., :F_], h[..., F_:]
    else:
        gate, up = ((torch.randn(shape, generator=g) * 3).to(dtype) for _ in range(2))
    out = torch.full(shape, float("nan"), dtype=dtype)
    result = kernels.swiglu(gate, up, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert_matches(out, gate, up)


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_strided_out_and_extremes(kernels, dtype):
    # out: a column slice of a wider NaN buffer; gate spans large magnitudes (silu saturates both ways).
    g = generator(dtype, "extremes")
    rows, F_ = 19, 99
    h = torch.randn(rows, 2 * F_, generator=g)
    h[:, :F_] *= 12
    h = h.to(dtype)
    wide = torch.full((rows, F_ + 5), float("nan"), dtype=dtype)
    out = kernels.swiglu(h[:, :F_], h[:, F_:], out=wide[:, 2: 2 + F_])
    assert_matches(out, h[:, :F_], h[:, F_:])
    assert wide[:, :2].isnan().all() and wide[:, 2 + F_:].isnan().all()


def test_swiglu_allocates_out(kernels):
    gate, up = torch.randn(2, 3, 19), torch.randn(2, 3, 19)
    out = kernels.swiglu(gate, up)
    assert out.shape == gate.shape
    assert_matches(out, gate, up)


@pytest.mark.parametrize("gate,up,out", [
    (torch.randn(3, 19), torch.randn(3, 18), None),                          # shapes differ
    (torch.randn(3, 19), torch.randn(3, 19, dtype=torch.bfloat16), None),    # dtypes differ
    (torch.randn(3, 19), torch.randn(3, 19), torch.empty(3, 19, dtype=torch.float16)),
    (torch.randn(3, 19), torch.randn(3, 19), torch.empty(3, 18)),            # out shape
    (torch.ones(3, 19, dtype=torch.int64), torch.ones(3, 19, dtype=torch.int64), None),
    (torch.randn(19, 3).t(), torch.randn(19, 3).t(), None),                  # last dim not contiguous
])
def test_swiglu_bad_input(kernels, gate, up, out):
    with pytest.raises(ValueError):
        kernels.swiglu(gate, up, out=out)
