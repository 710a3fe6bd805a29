"""CUDA rope and swiglu against the CPU kernels and torch, for both implementations of the pass (the
`kernels` fixture: the compiled kernels, then the torch twins, on device tensors); skipped without a
GPU or a CUDA build. Inputs are drawn on the device; the CPU reference takes a copy of them.
"""
import zlib

import pytest
import torch
import torch.nn.functional as F

from illada_rt import build_info, ops

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (torch.cuda.is_available() and build_info()["cuda"] and ops.cuda_devices()[0] > 0),
                                 reason="needs a CUDA device and a CUDA build")]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def generator(*case):
    """A CUDA generator seeded from the case: inputs are drawn on the device."""
    return torch.Generator(device="cuda").manual_seed(zlib.crc32(repr(case).encode()))


# ----------------------------------------------------------------------------- rope

ROPE_SHAPES = [(1, 1, 1, 2), (2, 19, 4, 64), (3, 99, 8, 128), (1, 111, 6, 16), (2, 7, 32, 128)]  # [B, L, H, hd]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROPE_SHAPES)
@pytest.mark.parametrize("position_start", [0, 5])
def test_cuda_rope_matches_cpu_kernel_exactly(kernels, dtype, shape, position_start):
    # Same float32 arithmetic without FMA contraction on both sides: bit-identical results.
    # The reference is the compiled CPU kernel (ops.rope_) on a CPU copy of the same input.
    B, L, H, hd = shape
    g = generator(dtype, shape, position_start)
    x = (torch.randn(shape, device="cuda", generator=g) * 2).to(dtype)
    cos, sin = ops.rope_table(hd, position_start + L + 3, 10000.0)
    want = ops.rope_(x.cpu(), cos, sin, position_start=position_start)
    got = kernels.rope_(x, cos.cuda(), sin.cuda(), position_start=position_start)
    torch.cuda.synchronize()
    assert got is x
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_rope_on_head_slices_of_a_fused_projection(kernels, dtype):
    # q and k: head slices of one [B, L, H + 2 Hkv, hd] tensor (strided); v's heads stay untouched.
    g = generator(dtype, "fused")
    B, L, H, Hkv, hd = 2, 19, 8, 2, 64
    dev = torch.randn(B, L, H + 2 * Hkv, hd, device="cuda", generator=g).to(dtype)
    qkv = dev.cpu()                                    # the input, kept for the reference and for v
    cos, sin = ops.rope_table(hd, 64, 500000.0)
    want = qkv.clone()
    ops.rope_(want[:, :, :H], cos, sin, position_start=3)
    ops.rope_(want[:, :, H:H + Hkv], cos, sin)
    cos_d, sin_d = cos.cuda(), sin.cuda()
    kernels.rope_(dev[:, :, :H], cos_d, sin_d, position_start=3)
    kernels.rope_(dev[:, :, H:H + Hkv], cos_d, sin_d)
    torch.cuda.synchronize()
    assert torch.equal(dev.cpu(), want)
    assert torch.equal(dev[:, :, H + Hkv:].cpu(), qkv[:, :, H + Hkv:])


def test_cuda_rope_needs_tables_on_the_device(kernels):
    x = torch.randn(1, 4, 2, 16, device="cuda", generator=generator("tables"))
    before = x.clone()
    cos, sin = ops.rope_table(16, 8, 10000.0)
    with pytest.raises(ValueError, match="same device"):
        kernels.rope_(x, cos, sin)
    assert torch.equal(x, before)  # a refused call writes nothing


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
def test_cuda_swiglu(kernels, dtype, shape, layout):
    g = generator(dtype, shape, layout)
    F_ = shape[-1]
    if layout == "fused":  # gate, up: strided halves of one [..., 2F] projection
        h = (torch.randn(*shape[:-1], 2 * F_, device="cuda", generator=g) * 3).to(dtype)
        gate, up = h[..., :F_], h[..., F_:]
    else:
        gate, up = ((torch.randn(shape, device="cuda", generator=g) * 3).to(dtype) for _ in range(2))
    out = torch.full(shape, float("nan"), dtype=dtype, device="cuda")
    result = kernels.swiglu(gate, up, out=out)
    torch.cuda.synchronize()
    assert result.data_ptr() == out.data_ptr()
    assert_swiglu_matches(out, gate, up)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_swiglu_strided_out_and_extremes(kernels, dtype):
    g = generator(dtype, "extremes")
    rows, F_ = 19, 99
    h = torch.randn(rows, 2 * F_, device="cuda", generator=g)
    h[:, :F_] *= 12
    h = h.to(dtype)
    wide = torch.full((rows, F_ + 5), float("nan"), dtype=dtype, device="cuda")
    out = kernels.swiglu(h[:, :F_], h[:, F_:], out=wide[:, 2: 2 + F_])
    torch.cuda.synchronize()
    assert_swiglu_matches(out, h[:, :F_], h[:, F_:])
    assert wide[:, :2].isnan().all() and wide[:, 2 + F_:].isnan().all()


def test_cuda_swiglu_refuses_mixed_devices(kernels):
    gate = torch.randn(3, 19, device="cuda", generator=generator("mixed"))
    with pytest.raises(ValueError, match="same device"):
        kernels.swiglu(gate, torch.randn(3, 19))
