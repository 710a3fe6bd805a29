"""CUDA attention against a float64 reference, for both implementations of the pass (the `kernels`
fixture: the compiled kernel, then the torch twin, on device tensors); skipped without a GPU or a
CUDA build. Inputs are drawn on the device from seeded CUDA generators.

bfloat16/float16 use flash-attention's rule: max|out - ref| <= 2 max|torch_lowprec - ref| + 1e-5,
ref in float64 on the same (low-precision) inputs, torch_lowprec the plain torch attention in the
dtype on the GPU (scores and weights rounded to the dtype, as a torch model computes it).
"""
import math
import zlib

import pytest
import torch

from illada_rt import build_info, ops

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (torch.cuda.is_available() and build_info()["cuda"] and ops.cuda_devices()[0] > 0),
                                 reason="needs a CUDA device and a CUDA build")]

LOW = [torch.bfloat16, torch.float16]
CASES = [  # (B, Lq, Lk, H, Hkv, D)
    (1, 1, 1, 1, 1, 64),
    (2, 19, 19, 4, 2, 64),
    (1, 99, 111, 32, 8, 128),   # GQA 32/8, partial tiles on both sides
    (2, 111, 99, 32, 32, 128),  # MHA 32/32, more queries than keys
    (2, 64, 128, 32, 8, 64),    # exact tiles
    (1, 200, 333, 8, 2, 128),
    (3, 7, 19, 8, 1, 128),
    (2, 1, 257, 4, 4, 64),      # a single query row (decode-like)
]


def generator(*case):
    """A CUDA generator seeded from the case: inputs are drawn on the device."""
    return torch.Generator(device="cuda").manual_seed(zlib.crc32(repr(case).encode()))


def reference64(q, k, v, key_mask, scale):
    """float64 attention in the ops layout [B, L, H, D]; rows with no unmasked key are zeros."""
    qh, kh, vh = (t.double().transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
    rep = qh.shape[1] // kh.shape[1]
    kh, vh = kh.repeat_interleave(rep, 1), vh.repeat_interleave(rep, 1)
    scores = (qh @ kh.transpose(-1, -2)) * scale
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    out = torch.nan_to_num(scores.softmax(-1), nan=0.0) @ vh
    return out.transpose(1, 2)


def torch_lowprec(q, k, v, key_mask, scale):
    """Plain torch attention in the dtype (what a torch model would compute)."""
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    rep = qh.shape[1] // kh.shape[1]
    kh, vh = kh.repeat_interleave(rep, 1), vh.repeat_interleave(rep, 1)
    scores = (qh @ kh.transpose(-1, -2)) * scale
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return (scores.float().softmax(-1).to(q.dtype) @ vh).transpose(1, 2)


def assert_matches(out, q, k, v, key_mask, scale=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    assert out.dtype == q.dtype and not out.isnan().any()
    ref = reference64(q, k, v, key_mask, scale)
    err = (out.double() - ref).abs().max().item()
    if q.dtype == torch.float32:
        assert err <= 1e-5, err
        return
    torch_err = (torch_lowprec(q, k, v, key_mask, scale).double() - ref).abs().max().item()
    assert err <= 2 * torch_err + 1e-5, (err, torch_err)


def left_padding_mask(B, Lk):
    """bool [B, Lk] on the GPU: sequence b has min(5 b, Lk - 1) pad keys on the left."""
    pads = torch.tensor([min(5 * b, Lk - 1) for b in range(B)], device="cuda")
    return torch.arange(Lk, device="cuda")[None, :] >= pads[:, None]


def poisoned(like):
    """An output buffer like `like`, NaN-filled: a row the op does not write fails the checks."""
    return torch.full_like(like, float("nan"))


def random_inputs(g, B, Lq, Lk, H, Hkv, D, dtype):
    q = torch.randn(B, Lq, H, D, device="cuda", generator=g).to(dtype)
    k = torch.randn(B, Lk, Hkv, D, device="cuda", generator=g).to(dtype)
    v = torch.randn(B, Lk, Hkv, D, device="cuda", generator=g).to(dtype)
    return q, k, v


@pytest.mark.parametrize("dtype", LOW + [torch.float32])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("masked", [False, True])
def test_cuda_attention(kernels, dtype, case, masked):
    B, Lq, Lk, H, Hkv, D = case
    q, k, v = random_inputs(generator(dtype, case, masked), B, Lq, Lk, H, Hkv, D, dtype)
    key_mask = left_padding_mask(B, Lk) if masked else None
    out = poisoned(q)
    result = kernels.attention(q, k, v, key_mask, out=out)
    torch.cuda.synchronize()
    assert result.data_ptr() == out.data_ptr()
    assert_matches(out, q, k, v, key_mask)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("D", [64, 128])
def test_cuda_attention_random_key_mask_and_large_scores(kernels, dtype, D):
    # Scattered masked keys (not only padding) and q scaled up so the softmax is peaked.
    g = generator(dtype, D, "scatter")
    B, L, H, Hkv = 2, 150, 8, 2
    q, k, v = random_inputs(g, B, L, L, H, Hkv, D, dtype)
    q = (q.float() * 3).to(dtype)
    key_mask = torch.rand(B, L, device="cuda", generator=g) < 0.6
    key_mask[:, 7] = True
    out = kernels.attention(q, k, v, key_mask, out=poisoned(q))
    torch.cuda.synchronize()
    assert_matches(out, q, k, v, key_mask)


@pytest.mark.parametrize("dtype", LOW + [torch.float32])
@pytest.mark.parametrize("heads,kv_heads,D", [(32, 8, 128), (32, 32, 128), (32, 8, 64), (32, 32, 64), (6, 3, 64)])
def test_cuda_attention_fused_qkv(kernels, dtype, heads, kv_heads, D):
    # q, k, v: head slices of one fused projection [B, L, H + 2 Hkv, D]; out: a slice of a wider buffer.
    g = generator(dtype, heads, kv_heads, D)
    B, L = 2, 99
    qkv = (torch.randn(B, L, heads + 2 * kv_heads, D, device="cuda", generator=g) * 1.5).to(dtype)
    q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=2)
    wide = torch.full((B, L, heads + 1, D), float("nan"), dtype=dtype, device="cuda")
    key_mask = left_padding_mask(B, L)
    kernels.attention(q, k, v, key_mask, out=wide[:, :, 1:])
    torch.cuda.synchronize()
    assert_matches(wide[:, :, 1:], q, k, v, key_mask)
    assert wide[:, :, 0].isnan().all()


@pytest.mark.parametrize("dtype", LOW + [torch.float32])
def test_cuda_attention_query_rows_slice(kernels, dtype):
    # seq_q != seq_k: the queries are rows [5, 5 + 19) of a longer sequence, attending to all keys.
    g = generator(dtype, "rows")
    B, L, H, Hkv, D = 2, 111, 32, 8, 128
    q_all, k, v = random_inputs(g, B, L, L, H, Hkv, D, dtype)
    q = q_all[:, 5:24]
    key_mask = left_padding_mask(B, L)
    out = kernels.attention(q, k, v, key_mask, out=poisoned(q))
    full = kernels.attention(q_all, k, v, key_mask, out=poisoned(q_all))
    torch.cuda.synchronize()
    assert out.shape == q.shape
    assert_matches(out, q, k, v, key_mask)
    assert torch.equal(out, full[:, 5:24])  # each query row is computed on its own


@pytest.mark.parametrize("dtype", LOW + [torch.float32])
def test_cuda_attention_all_masked_sequence_gives_zeros(kernels, dtype):
    g = generator(dtype, "all-masked")
    B, Lq, Lk, H, Hkv, D = 3, 70, 130, 4, 2, 64
    q, k, v = random_inputs(g, B, Lq, Lk, H, Hkv, D, dtype)
    key_mask = left_padding_mask(B, Lk)
    key_mask[1] = False  # sequence 1 has no key at all
    out = kernels.attention(q, k, v, key_mask, out=poisoned(q))
    torch.cuda.synchronize()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    keep = [0, 2]
    assert_matches(out[keep], q[keep], k[keep], v[keep], key_mask[keep])


@pytest.mark.parametrize("dtype", LOW + [torch.float32])
def test_cuda_attention_single_key_copies_v(kernels, dtype):
    # One unmasked key (in the second key tile): weight exactly 1, so out = v of that key exactly.
    g = generator(dtype, "single")
    q, k, v = random_inputs(g, 2, 5, 100, 4, 4, 64, dtype)
    key_mask = torch.zeros(2, 100, dtype=torch.bool, device="cuda")
    key_mask[0, 83] = key_mask[1, 0] = True
    out = kernels.attention(q, k, v, key_mask, out=poisoned(q))
    torch.cuda.synchronize()
    assert torch.equal(out[0], v[0, 83:84].expand(5, 4, 64))
    assert torch.equal(out[1], v[1, 0:1].expand(5, 4, 64))


@pytest.mark.parametrize("dtype", LOW + [torch.float32])
@pytest.mark.parametrize("scale", [0.05, 0.3])
def test_cuda_attention_explicit_scale(kernels, dtype, scale):
    g = generator(dtype, "scale", scale)
    q, k, v = random_inputs(g, 2, 19, 70, 8, 2, 128, dtype)
    out = kernels.attention(q, k, v, scale=scale, out=poisoned(q))
    torch.cuda.synchronize()
    assert_matches(out, q, k, v, None, scale=scale)


def test_cuda_attention_float32_other_head_dims(kernels):
    # The float32 kernel takes any head_dim up to 256.
    for D in (16, 80, 256):
        q, k, v = random_inputs(generator("f32", D), 2, 19, 33, 4, 2, D, torch.float32)
        key_mask = left_padding_mask(2, 33)
        out = kernels.attention(q, k, v, key_mask, out=poisoned(q))
        torch.cuda.synchronize()
        assert_matches(out, q, k, v, key_mask)


# Layouts the CUDA kernel has no code for, each built on the device (a copy would be realigned).
UNSUPPORTED_LAYOUTS = {
    "bf16-D32": lambda g: torch.randn(1, 4, 2, 32, device="cuda", generator=g).to(torch.bfloat16),
    "fp16-D96": lambda g: torch.randn(1, 4, 2, 96, device="cuda", generator=g).half(),
    "fp32-D512": lambda g: torch.randn(1, 4, 2, 512, device="cuda", generator=g),             # float32 head_dim > 256
    "rows-8-bytes-off":
        lambda g: torch.randn(8 * 2 * 64 + 4, device="cuda", generator=g).to(torch.bfloat16)[4:].view(1, 8, 2, 64),
    "head-stride-68": lambda g: torch.randn(1, 8, 2, 68, device="cuda", generator=g).to(torch.bfloat16)[..., :64],
}


@pytest.mark.parametrize("layout", list(UNSUPPORTED_LAYOUTS))
def test_cuda_attention_refuses_unsupported_layouts(kernels, layout):
    """The CUDA kernel refuses layouts it has no code for; the torch twin (scaled_dot_product_attention)
    takes them, as the compiled CPU kernel does, and must compute them right."""
    q = UNSUPPORTED_LAYOUTS[layout](generator("layout", layout))
    if kernels.choice["attention"] == "custom":
        with pytest.raises(ValueError):
            kernels.attention(q, q, q)
        return
    out = kernels.attention(q, q, q, out=poisoned(q))
    torch.cuda.synchronize()
    assert_matches(out, q, q, q, None)


def test_cuda_attention_refuses_mixed_devices(kernels):
    q = torch.randn(1, 4, 2, 64, device="cuda", generator=generator("mixed")).to(torch.bfloat16)
    with pytest.raises(ValueError, match="same device"):
        kernels.attention(q, q, q.cpu())
