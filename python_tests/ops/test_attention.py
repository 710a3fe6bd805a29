"""ops.attention (q [B, Lq, H, D], k/v [B, Lk, Hkv, D]) against reference.attention ([B, H, L, D])."""
import math
import zlib

import pytest
import torch

from illada_rt import reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CASES = [  # (B, Lq, Lk, H, Hkv, D)
    (1, 1, 1, 1, 1, 16),
    (2, 19, 19, 4, 2, 64),
    (1, 99, 99, 6, 3, 16),
    (3, 7, 19, 8, 1, 128),
    (2, 19, 99, 4, 4, 64),
    (2, 1, 19, 6, 3, 128),
]


def generator(*case):
    return torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))


def expected_attention(q, k, v, key_mask):
    """reference.attention in the ops layout [B, L, H, D]."""
    return reference.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), key_mask).transpose(1, 2)


def assert_matches(out, q, k, v, key_mask):
    """float32: ~1e-5. bf16/fp16, flash-attention's rule: max|out - ref32| <= 2 max|torch - ref32| + atol,
    ref32 the reference on the same inputs upcast (no final rounding), torch the reference in the dtype."""
    assert out.dtype == q.dtype and not out.isnan().any()
    if q.dtype == torch.float32:
        torch.testing.assert_close(out, expected_attention(q, k, v, key_mask), rtol=1e-5, atol=1e-5)
        return
    ref32 = expected_attention(q.float(), k.float(), v.float(), key_mask)
    err = (out.float() - ref32).abs().max()
    torch_err = (expected_attention(q, k, v, key_mask).float() - ref32).abs().max()
    assert err <= 2 * torch_err + 1e-5, (err, torch_err)


def left_padding_mask(B, Lk):
    """bool [B, Lk]: sequence b has b * 3 pad keys (at most Lk - 1) on the left."""
    pads = torch.tensor([min(3 * b, Lk - 1) for b in range(B)])
    return torch.arange(Lk)[None, :] >= pads[:, None]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("masked", [False, True])
def test_attention(kernels, dtype, case, masked):
    B, Lq, Lk, H, Hkv, D = case
    g = generator(dtype, case, masked)
    q = torch.randn(B, Lq, H, D, generator=g).to(dtype)
    k = torch.randn(B, Lk, Hkv, D, generator=g).to(dtype)
    v = torch.randn(B, Lk, Hkv, D, generator=g).to(dtype)
    key_mask = left_padding_mask(B, Lk) if masked else None
    out = torch.full_like(q, float("nan"))
    result = kernels.attention(q, k, v, key_mask, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert_matches(out, q, k, v, key_mask)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,D", [(4, 2, 64), (6, 3, 16), (8, 1, 128), (3, 3, 16)])
def test_attention_fused_qkv(kernels, dtype, heads, kv_heads, D):
    # q, k, v: head slices of one fused projection [B, L, H + 2 Hkv, D]; out a slice of a wider buffer.
    g = generator(dtype, heads, kv_heads, D)
    B, L = 2, 19
    qkv = (torch.randn(B, L, heads + 2 * kv_heads, D, generator=g) * 1.5).to(dtype)
    q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=2)
    wide = torch.full((B, L, heads + 1, D), float("nan"), dtype=dtype)
    key_mask = left_padding_mask(B, L)
    kernels.attention(q, k, v, key_mask, out=wide[:, :, 1:])
    assert_matches(wide[:, :, 1:], q, k, v, key_mask)
    assert wide[:, :, 0].isnan().all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_query_rows_slice(kernels, dtype):
    # seq_q != seq_k: the queries are rows [5, 5 + 19) of a longer sequence, attending to all 99 keys.
    g = generator(dtype, "rows")
    B, L, H, Hkv, D = 2, 99, 6, 3, 64
    q_all = torch.randn(B, L, H, D, generator=g).to(dtype)
    k = torch.randn(B, L, Hkv, D, generator=g).to(dtype)
    v = torch.randn(B, L, Hkv, D, generator=g).to(dtype)
    q = q_all[:, 5:24]
    key_mask = left_padding_mask(B, L)
    out = kernels.attention(q, k, v, key_mask)
    assert out.shape == q.shape
    assert_matches(out, q, k, v, key_mask)
    full = kernels.attention(q_all, k, v, key_mask)
    assert torch.equal(out, full[:, 5:24])  # each query row is computed on its own


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_all_masked_row_gives_zeros(kernels, dtype):
    g = generator(dtype, "all-masked")
    B, Lq, Lk, H, Hkv, D = 3, 7, 19, 4, 2, 16
    q = torch.randn(B, Lq, H, D, generator=g).to(dtype)
    k = torch.randn(B, Lk, Hkv, D, generator=g).to(dtype)
    v = torch.randn(B, Lk, Hkv, D, generator=g).to(dtype)
    key_mask = left_padding_mask(B, Lk)
    key_mask[1] = False  # sequence 1 has no key at all
    out = kernels.attention(q, k, v, key_mask, out=torch.full_like(q, float("nan")))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    keep = [0, 2]
    assert_matches(out[keep], q[keep], k[keep], v[keep], key_mask[keep])


def test_attention_single_key_copies_v(kernels):
    # One unmasked key: softmax weight exactly 1, so out = v of that key, in every dtype exactly.
    for dtype in DTYPES:
        q, k, v = (torch.randn(2, 5, 4, 16).to(dtype) for _ in range(3))
        key_mask = torch.zeros(2, 5, dtype=torch.bool)
        key_mask[0, 3] = key_mask[1, 0] = True
        out = kernels.attention(q, k, v, key_mask)
        assert torch.equal(out[0], v[0, 3:4].expand(5, 4, 16))
        assert torch.equal(out[1], v[1, 0:1].expand(5, 4, 16))


@pytest.mark.parametrize("scale", [0.3, 1.0])
def test_attention_explicit_scale(kernels, scale):
    g = generator("scale", scale)
    B, L, H, Hkv, D = 2, 19, 4, 2, 64
    q = torch.randn(B, L, H, D, generator=g)
    k = torch.randn(B, L, Hkv, D, generator=g)
    v = torch.randn(B, L, Hkv, D, generator=g)
    out = kernels.attention(q, k, v, scale=scale)
    # reference.attention divides by sqrt(D): pre-scale q so that its scale becomes `scale`.
    expected = expected_attention(q.double() * (scale * math.sqrt(D)), k.double(), v.double(), None)
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-5)


def attention_args(**bad):
    B, L, H, Hkv, D = 2, 5, 4, 2, 16
    args = dict(q=torch.randn(B, L, H, D), k=torch.randn(B, L, Hkv, D), v=torch.randn(B, L, Hkv, D),
                key_mask=torch.ones(B, L, dtype=torch.bool), out=None)
    args.update(bad)
    return args


@pytest.mark.parametrize("bad", [
    dict(k=torch.randn(2, 5, 3, 16), v=torch.randn(2, 5, 3, 16)),   # 3 kv heads do not divide 4
    dict(key_mask=torch.ones(2, 5, dtype=torch.int64)),              # mask dtype
    dict(key_mask=torch.ones(2, 5, dtype=torch.uint8)),
    dict(key_mask=torch.ones(2, 5, dtype=torch.float32)),
    dict(key_mask=torch.ones(2, 6, dtype=torch.bool)),               # mask shape
    dict(key_mask=torch.ones(5, 2, dtype=torch.bool).t()),           # mask not contiguous in Lk
    dict(k=torch.randn(2, 5, 2, 16, dtype=torch.bfloat16)),          # k dtype
    dict(v=torch.randn(2, 6, 2, 16)),                                # v length differs from k
    dict(k=torch.randn(2, 5, 2, 32), v=torch.randn(2, 5, 2, 32)),    # head_dim differs
    dict(out=torch.empty(2, 5, 4, 8)),                               # out shape
    dict(out=torch.empty(2, 5, 4, 16, dtype=torch.float16)),         # out dtype
    dict(q=torch.randn(2, 5, 4, 32)[..., ::2]),                      # head_dim not contiguous
    dict(q=torch.randn(2, 5, 64)),                                   # not 4-D
    dict(q=torch.ones(2, 5, 4, 16, dtype=torch.int64)),              # not a float dtype
])
def test_attention_bad_input(kernels, bad):
    a = attention_args(**bad)
    with pytest.raises(ValueError):
        kernels.attention(a["q"], a["k"], a["v"], a["key_mask"], out=a["out"])
