"""ops.rope_ (in place, x [B, L, H, hd]) against reference.rotary (x [B, H, L, hd])."""
import zlib

import pytest
import torch

from illada_rt import ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 1, 1, 2), (2, 19, 3, 16), (3, 7, 5, 64), (1, 99, 1, 64), (2, 3, 7, 16)]  # [B, L, H, hd]


def generator(*case):
    return torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))


def expected_rope(x, theta, position_start=0):
    """Reference rotation of x [B, L, H, hd] at positions position_start + l: rotate a longer
    sequence whose last L rows are x, keep those rows."""
    B, L, H, hd = x.shape
    longer = torch.cat([torch.zeros(B, position_start, H, hd, dtype=x.dtype), x], dim=1)
    return reference.rotary(longer.transpose(1, 2), theta).transpose(1, 2)[:, position_start:]


def assert_matches(out, expected):
    """float32: ~1e-5; bf16/fp16: at most 1 ulp (both compute in float32, then round)."""
    assert not out.isnan().any()
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        return
    ulp = torch.finfo(out.dtype).eps * expected.float().abs().clamp_min(torch.finfo(out.dtype).tiny)
    assert ((out.float() - expected.float()).abs() <= ulp).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("position_start", [0, 5])
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_rope(kernels, dtype, shape, position_start, theta):
    g = generator(dtype, shape, position_start, theta)
    B, L, H, hd = shape
    x = (torch.randn(shape, generator=g) * 2).to(dtype)  # [B, L, H, hd]
    expected = expected_rope(x, theta, position_start)
    cos, sin = ops.rope_table(hd, position_start + L + 3, theta)  # [positions, hd/2]
    result = kernels.rope_(x, cos, sin, position_start)
    assert result is x
    assert_matches(x, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads", [(3, 1), (4, 2), (5, 5), (6, 3)])
@pytest.mark.parametrize("hd", [2, 16, 64])
def test_rope_on_fused_qkv(kernels, dtype, heads, kv_heads, hd):
    # q and k are head slices of one fused [B, L, H + 2 Hkv, hd] projection: strided in the head dim.
    g = generator(dtype, heads, kv_heads, hd)
    B, L, theta = 2, 19, 10000.0
    qkv = torch.randn(B, L, heads + 2 * kv_heads, hd, generator=g).to(dtype)
    q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=2)
    expected_q, expected_k, v_before = expected_rope(q, theta), expected_rope(k, theta), v.clone()
    cos, sin = ops.rope_table(hd, L, theta)  # the table exactly as long as needed
    kernels.rope_(q, cos, sin)
    kernels.rope_(k, cos, sin)
    assert_matches(q, expected_q)
    assert_matches(k, expected_k)
    assert torch.equal(v, v_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_on_transposed_layout(kernels, dtype):
    # x [B, L, H, hd] as a transposed view of [B, H, L, hd]: every stride but the last is unusual.
    g = generator(dtype, "transposed")
    bhld = torch.randn(3, 5, 19, 16, generator=g).to(dtype)
    x = bhld.transpose(1, 2)
    expected = expected_rope(x, 10000.0, 2)
    cos, sin = ops.rope_table(16, 21, 10000.0)
    kernels.rope_(x, cos, sin, 2)
    assert_matches(x, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_offset_equals_slice_of_longer_rotation(kernels, dtype):
    # Rotating rows [P, P + L) of a sequence alone, with position_start P, equals the same rows
    # of the whole sequence rotated at once.
    g = generator(dtype, "offset")
    P, L, hd = 11, 8, 64
    whole = torch.randn(2, P + L, 3, hd, generator=g).to(dtype)
    part = whole[:, P:].clone()
    cos, sin = ops.rope_table(hd, P + L, 10000.0)
    kernels.rope_(whole, cos, sin, 0)
    kernels.rope_(part, cos, sin, P)
    assert torch.equal(part, whole[:, P:])


def test_rope_table_matches_reference_angles():
    cos, sin = ops.rope_table(16, 19, 10000.0)
    assert cos.shape == sin.shape == (19, 8) and cos.dtype == torch.float32
    x = torch.zeros(1, 1, 19, 16)
    x[..., 0] = 1.0  # rotates (1, 0) in the plane of dims (0, 8): the result is (cos, sin) of angle 0
    rotated = reference.rotary(x, 10000.0)[0, 0]
    assert torch.equal(rotated[:, 0], cos[:, 0]) and torch.equal(rotated[:, 8], sin[:, 0])


def rope_bad(kernels, x=None, table=None, position_start=0):
    x = torch.randn(1, 4, 2, 16) if x is None else x
    cos, sin = ops.rope_table(16, 8, 10000.0) if table is None else table
    before = x.clone()
    with pytest.raises(ValueError):
        kernels.rope_(x, cos, sin, position_start)
    assert torch.equal(x, before)  # a refused call writes nothing


def test_rope_odd_head_dim_raises(kernels):
    rope_bad(kernels, torch.randn(1, 4, 2, 5), ops.rope_table(5, 8, 10000.0))
    rope_bad(kernels, torch.randn(1, 4, 2, 5), (torch.zeros(8, 2), torch.zeros(8, 2)))


@pytest.mark.parametrize("L,position_start", [(9, 0), (4, 5), (1, 8), (4, -1)])
def test_rope_positions_beyond_table_raise(kernels, L, position_start):
    rope_bad(kernels, torch.randn(1, L, 2, 16), position_start=position_start)  # the table holds 8 positions


@pytest.mark.parametrize("table", [
    (torch.zeros(8, 8, dtype=torch.float64), torch.zeros(8, 8, dtype=torch.float64)),  # table dtype
    (torch.zeros(8, 7), torch.zeros(8, 7)),                                          # not hd/2 wide
    (torch.zeros(8, 8), torch.zeros(7, 8)),                                          # cos/sin differ
    (torch.zeros(8, 16)[:, ::2], torch.zeros(8, 16)[:, ::2]),                        # not contiguous
])
def test_rope_bad_table_raises(kernels, table):
    rope_bad(kernels, table=table)


@pytest.mark.parametrize("x", [
    torch.randn(4, 2, 16),                      # not 4-D
    torch.randn(1, 4, 2, 32)[..., ::2],         # head_dim not contiguous
    torch.ones(1, 4, 2, 16, dtype=torch.int64),  # not a float dtype
])
def test_rope_bad_x_raises(kernels, x):
    rope_bad(kernels, x)
