"""CUDA rope and swiglu against the CPU kernels and torch (skipped without a GPU or a CUDA build)."""
import zlib

import pytest
import torch
import torch.nn.functional as F

from illada_rt import build_info, ops

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and build_info()["cuda"] and ops.cuda_devices()[0] > 0),
                                reason="needs a CUDA device and a CUDA build")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def generator(*case):
    return torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))


# ----------------------------------------------------------------------------- rope

ROPE_SHAPES = [(1, 1, 1, 2), (2, 19, 4, 64), (3, 99, 8, 128), (1, 111, 6, 16), (2, 7, 32, 128)]  # [B, L, H, hd]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROPE_SHAPES)
@pytest.mark.parametrize("position_start", [0, 5])
def test_cuda_rope_matches_cpu_kernel_exactly(dtype, shape, position_start):
    # Same float32 arithmetic without FMA contraction on both sides: bit-identical results.
    B, L, H, hd = shape
    g = generator(dtype, shape, position_start)
    x = (torch.randn(shape, generator=g) * 2).to(dtype)
    cos, sin = ops.rope_table(hd, position_start + L + 3, 10000.0)
    want = ops.rope_(x.clone(), cos, sin, position_start=position_start)
    got = ops.rope_(x.cuda(), cos.cuda(), sin.cuda(), position_start=position_start)
    torch.cuda.synchronize()
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_rope_on_head_slices_of_a_fused_projection(dtype):
    # q and k: head slices of one [B, L, H + 2 Hkv, hd] tensor (strided); v's heads stay untouched.
    g = generator(dtype, "fused")
    B, L, H, Hkv, hd = 2, 19, 8, 2, 64
    qkv = torch.randn(B, L, H + 2 * Hkv, hd, generator=g).to(dtype)
    cos, sin = ops.rope_table(hd, 64, 500000.0)
    want = qkv.clone()
    ops.rope_(want[:, :, :H], cos, sin, position_start=3)
    ops.rope_(want[:, :, H:H + Hkv], cos, sin)
    dev = qkv.cuda()
    cos_d, sin_d = cos.cuda(), sin.cuda()
    ops.rope_(dev[:, :, :H], cos_d, sin_d, position_start=3)
    ops.rope_(dev[:, :, H:H + Hkv], cos_d, sin_d)
    torch.cuda.synchronize()
    assert torch.equal(dev.cpu(), want)
    assert torch.equal(dev[:, :, H + Hkv:].cpu(), qkv[:, :, H + Hkv:])


def test_cuda_rope_needs_tables_on_the_device():
    x = torch.randn(1, 4, 2, 16, device="cuda")
    cos, sin = ops.rope_table(16, 8, 10000.0)
    with pytest.raises(ValueError, match="same device"):
        ops.rope_(x, cos, sin)


# ----------------------------------------------------------------------------- swiglu

SWIGLU_SHAPES = [(1, 1), (3, 19), (19, 99), (7, 111), (2, 4097), (5, 14336), (2, 3, 19)]  # [..., F]


def assert_swiglu_matches(out, gate, up):
    """bf16/fp16: within 1 ulp of torch's F.silu(gate) * up in the dtype (computed on the CPU).
    float32: within 4 eps relative of the float64 truth (CUDA's expf is within 2 ulp, then a
    division and a product)."""
    out, gate, up = out.cpu(), gate.cpu(), up.cpu()
    assert out.dtype == gate.dtype and not out.isnan().any()
    finfo = torch.finfo(out.dtype)
    if out.dtype == torch.float32:
        expected, eps_count = F.silu(gate.double()) * up.double(), 4
    else:
        expected, eps_count = (F.silu(gate) * up).double(), 1
    allowed = eps_count * finfo.eps * expected.abs().clamp_min(finfo.tiny)
    assert ((out.double() - expected).abs() <= allowed).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SWIGLU_SHAPES)
@pytest.mark.parametrize("layout", ["fused", "separate"])
def test_cuda_swiglu(dtype, shape, layout):
    g = generator(dtype, shape, layout)
    F_ = shape[-1]
    if layout == "fused":  # gate, up: strided halves of one [..., 2F] projection
        h = (torch.randn(*shape[:-1], 2 * F_, generator=g) * 3).to(dtype).cuda()
        gate, up = h[..., :F_], h[..., F_:]
    else:
        gate, up = ((torch.randn(shape, generator=g) * 3).to(dtype).cuda() for _ in range(2))
    out = torch.full(shape, float("nan"), dtype=dtype, device="cuda")
    result = ops.swiglu(gate, up, out=out)
    torch.cuda.synchronize()
    assert result.data_ptr() == out.data_ptr()
    assert_swiglu_matches(out, gate, up)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_swiglu_strided_out_and_extremes(dtype):
    g = generator(dtype, "extremes")
    rows, F_ = 19, 99
    h = torch.randn(rows, 2 * F_, generator=g)
    h[:, :F_] *= 12
    h = h.to(dtype).cuda()
    wide = torch.full((rows, F_ + 5), float("nan"), dtype=dtype, device="cuda")
    out = ops.swiglu(h[:, :F_], h[:, F_:], out=wide[:, 2: 2 + F_])
    torch.cuda.synchronize()
    assert_swiglu_matches(out, h[:, :F_], h[:, F_:])
    assert wide[:, :2].isnan().all() and wide[:, 2 + F_:].isnan().all()


def test_cuda_swiglu_refuses_mixed_devices():
    gate = torch.randn(3, 19, device="cuda")
    with pytest.raises(ValueError, match="same device"):
        ops.swiglu(gate, torch.randn(3, 19))
