"""Quantized weight formats: round-trip error bounds, storage layout, and the quantized matmul
(quantized_linear, kernel or reference) against the dequantized reference."""
import pytest
import torch

from illada_rt.model import linear as qlinear
from illada_rt.quant.formats import (FP8_MAX, QuantizedWeight, cat_rows, dequantize, quantize_weight,
                                     reference_linear, stored_parts)
from illada_rt.model.linear import linear, quantized_linear

SHAPES = [(19, 64), (111, 96), (64, 32), (7, 160)]   # [N, K]: odd output counts, K divisible by 32


def weight(n, k, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) / k ** 0.5
    w[0] *= 40.0                                    # one row far larger: scales must be per row / group
    if n > 3:
        w[3] = 0.0                                  # an all-zero row quantizes to zeros, not NaN
    return w.to(dtype)


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_round_trip_within_half_a_step(n, k, dtype):
    w = weight(n, k, n * k, dtype).float()
    qw = quantize_weight(w, "int8")
    err = (dequantize(qw) - w).abs()
    assert qw.qweight.dtype == torch.int8 and qw.scale.shape == (n,)
    assert torch.all(err <= qw.scale[:, None] / 2 + 1e-7)
    assert torch.all(dequantize(qw)[3] == 0) and torch.isfinite(dequantize(qw)).all()


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("group_size", [16, 32])
@pytest.mark.parametrize("zero_point", [True, False])
def test_int4_round_trip_within_half_a_step(n, k, group_size, zero_point):
    w = weight(n, k, n + k + group_size)
    qw = quantize_weight(w, "int4", group_size, zero_point)
    assert qw.qweight.shape == (n, k // 2) and qw.qweight.dtype == torch.uint8
    assert qw.scale.shape == (n, k // group_size) and (qw.zero is not None) == zero_point
    step = qw.scale.repeat_interleave(group_size, 1)                     # [N, K]
    assert torch.all((dequantize(qw) - w).abs() <= step / 2 + 1e-7)
    assert torch.all(dequantize(qw)[3] == 0)


def test_int4_packing_order_low_nibble_first():
    w = torch.zeros(1, 4)
    w[0, 0], w[0, 1] = -1.0, 1.0                     # symmetric: codes 8 - 7 = 1 and 8 + 7 = 15
    qw = quantize_weight(w, "int4", group_size=4, zero_point=False)
    assert qw.qweight.tolist() == [[1 | (15 << 4), 8 | (8 << 4)]]


@pytest.mark.parametrize("n,k", SHAPES)
def test_fp8_round_trip_relative_error(n, k):
    w = weight(n, k, 3 * n + k)
    qw = quantize_weight(w, "fp8")
    assert qw.qweight.dtype == torch.float8_e4m3fn
    err = (dequantize(qw) - w).abs()
    # 3 mantissa bits: half an ulp is 2^-4 relative; below the normals, half the smallest subnormal
    bound = torch.maximum(w.abs() * 2 ** -4, qw.scale[:, None] * 2 ** -10) + 1e-7
    assert torch.all(err <= bound)
    assert torch.allclose(qw.qweight.float().abs().amax(1)[:3], torch.full((3,), FP8_MAX))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown quantization format"):
        quantize_weight(torch.randn(4, 8), "int3")
    with pytest.raises(ValueError, match="divide the input dim 40"):
        quantize_weight(torch.randn(4, 40), "int4", group_size=32)
    with pytest.raises(ValueError, match="2-D float"):
        quantize_weight(torch.randn(8), "int8")


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_stored_parts_describe_quantize_weight(fmt):
    qw = quantize_weight(weight(24, 64, 5), fmt, group_size=32)
    parts = dict(qw.parts())
    spec = stored_parts(fmt, 24, 64, 32, zero_point=True)
    assert set(parts) == set(spec)
    for name, (shape, dtype) in spec.items():
        assert tuple(parts[name].shape) == shape and parts[name].dtype == dtype
    assert qw.nbytes == sum(t.numel() * t.element_size() for t in parts.values())
    assert qw.shape == (24, 64)


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_cat_rows_equals_quantizing_the_stacked_matrix(fmt):
    a, b = weight(19, 64, 1), weight(8, 64, 2)
    joined = cat_rows([quantize_weight(a, fmt, 32), quantize_weight(b, fmt, 32)])
    assert torch.equal(dequantize(joined), dequantize(quantize_weight(torch.cat([a, b]), fmt, 32)))
    with pytest.raises(ValueError, match="differ"):
        cat_rows([quantize_weight(a, fmt, 32), quantize_weight(b, "int8" if fmt != "int8" else "fp8", 32)])


# ------------------------------------------------------------------ the matmul

# max|out - ref| / max|ref|: the kernels compute in float32 like the reference; bf16 output rounds;
# fp8 may round an activation to the neighbouring code where x / a_scale lies on a boundary.
TOL = {(torch.float32, "int8"): 1e-5, (torch.float32, "int4"): 1e-5, (torch.float32, "fp8"): 2e-3,
       (torch.bfloat16, "int8"): 1e-2, (torch.bfloat16, "int4"): 1e-2, (torch.bfloat16, "fp8"): 1e-2}


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 5, 67])
@pytest.mark.parametrize("n,k", SHAPES)
def test_quantized_linear_matches_dequantized_reference(kernels, fmt, dtype, m, n, k):
    g = torch.Generator().manual_seed(m * n + k)
    qw = quantize_weight(weight(n, k, m + n), fmt, group_size=32)
    x = torch.randn(2, m, k, generator=g).to(dtype)
    ref = reference_linear(x, qw).float()
    out = quantized_linear(kernels, x, qw)
    assert out.shape == (2, m, n) and out.dtype == dtype
    assert (out.float() - ref).abs().max() <= TOL[dtype, fmt] * ref.abs().max()
    if fmt != "fp8":   # weight-only formats: exactly x @ dequantize(w).T up to float rounding
        dense = x.float() @ dequantize(qw).t()
        assert (out.float() - dense).abs().max() <= TOL[dtype, fmt] * dense.abs().max()


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_quantized_linear_strided_input(kernels, fmt):
    qw = quantize_weight(weight(19, 64, 9), fmt, group_size=32)
    x = torch.randn(6, 128)[:, ::2]                         # [6, 64], stride 2
    assert not x.is_contiguous()
    out = quantized_linear(kernels, x, qw)
    ref = reference_linear(x.contiguous(), qw)
    assert (out - ref).abs().max() <= TOL[torch.float32, fmt] * ref.abs().max()


def test_fp8_activation_is_quantized_per_token():
    # W8A8: a token with one huge entry loses the small ones; its neighbour keeps them
    qw = quantize_weight(torch.eye(4), "fp8")
    x = torch.tensor([[1000.0, 1e-3, 0.0, 0.0], [1.0, 1e-3, 0.0, 0.0]])
    y = reference_linear(x, qw)
    assert y[0, 1] == 0 and abs(float(y[1, 1]) - 1e-3) < 1e-4


@pytest.mark.parametrize("fmt,kernel", sorted(qlinear.KERNELS.items()))
def test_dispatch_calls_the_kernel_with_2d_contiguous_input(kernels, monkeypatch, fmt, kernel):
    calls = []

    def fake(x, qweight, scale, *rest):
        calls.append((tuple(x.shape), x.is_contiguous(), rest))
        return torch.full((x.shape[0], qweight.shape[0]), 7.0, dtype=x.dtype)

    monkeypatch.setattr(kernels, kernel, fake)
    qw = quantize_weight(weight(19, 64, 1), fmt, group_size=32)
    out = quantized_linear(kernels, torch.randn(3, 5, 128)[..., ::2], qw)
    assert out.shape == (3, 5, 19) and torch.all(out == 7.0)
    shape, contiguous, rest = calls[0]
    assert shape == (15, 64) and contiguous
    assert rest == ((qw.zero, 32) if fmt == "int4" else ())


def test_linear_keeps_dense_weights_on_torch(kernels):
    x, w = torch.randn(3, 8), torch.randn(5, 8)
    assert torch.equal(linear(kernels, x, w), torch.nn.functional.linear(x, w))
    assert isinstance(quantize_weight(w, "int8"), QuantizedWeight)


# ------------------------------------------------------------------ fp8 activations from the norm

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_norm_fused_fp8_activation_equals_norm_then_linear(kernels, dtype, with_residual):
    from illada_rt.model.linear import Fp8Activation, rmsnorm_into
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 7, 64, generator=g).to(dtype)
    norm_w = (1 + 0.1 * torch.randn(64, generator=g)).to(dtype)
    res = torch.randn(2, 7, 64, generator=g).to(dtype) if with_residual else None
    qw = quantize_weight(weight(19, 64, 12), "fp8")
    res_a = None if res is None else res.clone()
    act = rmsnorm_into(kernels, qw, x, norm_w, 1e-5, residual=res_a)
    assert isinstance(act, Fp8Activation) and act.xq.shape == (2, 7, 64) and act.a_scale.shape == (2, 7)
    got = linear(kernels, act, qw)
    res_b = None if res is None else res.clone()
    want = reference_linear(kernels.rmsnorm(x, norm_w, 1e-5, residual=res_b), qw)
    assert got.shape == (2, 7, 19) and got.dtype == dtype
    assert (got.float() - want.float()).abs().max() <= TOL[dtype, "fp8"] * want.float().abs().max()
    if res is not None:
        assert torch.equal(res_a, res_b)                       # residual += x, as kernels.rmsnorm does
    dense = rmsnorm_into(kernels, quantize_weight(weight(19, 64, 12), "int8"), x, norm_w, 1e-5)
    assert torch.equal(dense, kernels.rmsnorm(x, norm_w, 1e-5))   # other weights get the plain norm
    with pytest.raises(ValueError, match="need an fp8 weight"):
        linear(kernels, act, quantize_weight(weight(19, 64, 12), "int8"))


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_quantizing_in_row_chunks_equals_one_pass(monkeypatch, fmt):
    import illada_rt.quant.formats as formats
    w = weight(37, 64, 21)
    whole = quantize_weight(w, fmt, group_size=32)
    monkeypatch.setattr(formats, "ROW_CHUNK", 8)
    chunked = quantize_weight(w, fmt, group_size=32)
    for a, b in ((whole.qweight, chunked.qweight), (whole.scale, chunked.scale), (whole.zero, chunked.zero)):
        assert (a is None and b is None) or torch.equal(a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
                                                        b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b)
