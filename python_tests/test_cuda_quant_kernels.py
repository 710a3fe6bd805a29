"""CUDA quantized-weight kernels against illada_rt.quant.formats (skipped without a GPU or a CUDA build).

Covers the compiled tensor-core matmul (by default up to QUANT_MATMUL_MAX_M rows, and at any M
with path="kernel"; bf16/fp16), the dequantize + cuBLAS path (large M, float32, shapes the
kernel does not take), the fp8
activation kernels (bit-exact with torch's quantization of the same rows) and fp8_linear.
"""
import pytest
import torch

from illada_rt import build_info, ops
from illada_rt.quant import formats

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and build_info()["cuda"] and ops.cuda_devices()[0] > 0),
                                reason="needs a CUDA device and a CUDA build")

FLOATS = [torch.float32, torch.bfloat16, torch.float16]


def quantized(fmt, n, k, seed, group_size=128, zero_point=True):
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=g) * k ** -0.5
    return formats.quantize_weight(w, fmt, group_size=group_size, zero_point=zero_point)


def int_linear(x, qw, out=None, path="auto"):
    if qw.format == "int8":
        return ops.int8_linear(x, qw.qweight, qw.scale, out=out, path=path)
    return ops.int4_linear(x, qw.qweight, qw.scale, qw.zero, qw.group_size, out=out, path=path)


def fp8_capable():
    return torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("fmt,n,k,group_size", [("int8", 19, 384, 0), ("int8", 7, 100, 0), ("int4", 19, 384, 32),
                                                ("int4", 5, 12, 2), ("int4", 33, 96, 96)])
@pytest.mark.parametrize("padded_out", [False, True])
def test_cuda_dequantize_matches_formats(dtype, fmt, n, k, group_size, padded_out):
    """Vectorized (K % 8 == 0, aligned rows) and per-element kernels, into a poisoned out."""
    qw = quantized(fmt, n, k, seed=n + k, group_size=group_size or 32)
    out = torch.full((n, k + 1 if padded_out else k), float("nan"), dtype=dtype, device="cuda")[:, :k]
    if fmt == "int8":
        got = ops.dequantize_int8(qw.qweight, qw.scale, dtype, out=out)
    else:
        got = ops.dequantize_int4(qw.qweight, qw.scale, qw.zero, group_size, dtype, out=out)
    torch.cuda.synchronize()
    torch.testing.assert_close(got, formats.dequantize(qw, dtype), rtol=0, atol=0)


# (n, k, group_size): kernel shapes (K % 128 == 0, G % 32 == 0, odd N) and one the kernel does not take.
SHAPES = [(19, 256, 32), (130, 384, 128), (64, 4096, 128), (40, 512, 64), (19, 96, 32)]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("fmt,zero_point", [("int8", True), ("int4", True), ("int4", False)])
@pytest.mark.parametrize("n,k,group_size", SHAPES)
@pytest.mark.parametrize("m", [1, 7, 16, 33, 64, 65, 300])
def test_cuda_int_linear_matches_reference(dtype, fmt, zero_point, n, k, group_size, m):
    qw = quantized(fmt, n, k, seed=n * k + m, group_size=group_size, zero_point=zero_point)
    g = torch.Generator(device="cuda").manual_seed(m)
    x = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
    y = int_linear(x, qw, out=out)
    torch.cuda.synchronize()
    assert y is out and not y.isnan().any()
    ref32 = x.float() @ formats.dequantize(qw).t()
    low = (x @ formats.dequantize(qw, dtype).t()).float()          # torch (cuBLAS) in the same precision
    torch_err = (low - ref32).abs().max().item()
    scale = ref32.abs().max().item()
    assert (y.float() - ref32).abs().max().item() <= 2 * torch_err + 1e-5 * scale
    if dtype == torch.float32:
        torch.testing.assert_close(y, formats.reference_linear(x, qw), rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("m", [1, 65, 300, 1000])
def test_cuda_int_linear_kernel_and_dequant_paths_agree(dtype, fmt, m):
    """path="kernel" at any M (the crossover bench times it past QUANT_MATMUL_MAX_M) and
    path="dequant" at any M both stay within twice torch's own error in the same precision."""
    n, k = 130, 512
    qw = quantized(fmt, n, k, seed=m + 17)
    x = torch.randn(m, k, device="cuda", generator=torch.Generator(device="cuda").manual_seed(m)).to(dtype)
    ref32 = x.float() @ formats.dequantize(qw).t()
    torch_err = ((x @ formats.dequantize(qw, dtype).t()).float() - ref32).abs().max().item()
    for path in ("kernel", "dequant"):
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        y = int_linear(x, qw, out=out, path=path)
        torch.cuda.synchronize()
        assert not y.isnan().any(), path
        assert (y.float() - ref32).abs().max().item() <= 2 * torch_err + 1e-5 * ref32.abs().max().item(), path


def test_cuda_int_linear_kernel_path_names_what_it_cannot_take():
    qw = quantized("int4", 32, 96, seed=2, group_size=32)   # K = 96 is not a multiple of 128
    with pytest.raises(ValueError, match="K = 96"):
        int_linear(torch.randn(4, 96, device="cuda", dtype=torch.bfloat16), qw, path="kernel")
    qw8 = quantized("int8", 32, 128, seed=3)
    with pytest.raises(ValueError, match="float32"):
        int_linear(torch.randn(4, 128, device="cuda"), qw8, path="kernel")


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_cuda_int_linear_batched_block_rows(fmt):
    """[B, L, K] input as the model passes it (B * L = 2 * 32 rows: the kernel path)."""
    qw = quantized(fmt, 4096 // 16, 1024, seed=3)
    x = torch.randn(2, 32, 1024, device="cuda", dtype=torch.bfloat16)
    y = int_linear(x, qw)
    ref32 = x.float() @ formats.dequantize(qw).t()
    low = (x @ formats.dequantize(qw, torch.bfloat16).t()).float()
    assert (y.float() - ref32).abs().max() <= 2 * (low - ref32).abs().max() + 1e-5


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("rows,dim", [(1, 64), (19, 4096), (111, 999)])
def test_cuda_quantize_fp8_per_token_matches_formats(dtype, rows, dim):
    g = torch.Generator(device="cuda").manual_seed(rows * dim)
    x = (torch.randn(rows, dim, device="cuda", generator=g)
         * torch.logspace(-3, 3, rows, device="cuda")[:, None]).to(dtype)
    x[0] = 0.0
    xq = torch.full((rows, dim), 0x7f, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)
    a_scale = torch.full((rows,), float("nan"), device="cuda")
    ops.quantize_fp8_per_token(x, out=(xq, a_scale))
    want_q, want_s = formats.quantize_activation_fp8(x)
    torch.cuda.synchronize()
    assert torch.equal(xq.view(torch.uint8), want_q.view(torch.uint8))
    assert torch.equal(a_scale, want_s)


def test_cuda_cast_fp8_matches_torch():
    bits = torch.randint(-(1 << 31), 1 << 31, (1 << 22,), dtype=torch.int64, device="cuda")
    x = bits.to(torch.int32).view(torch.float32)
    assert torch.equal(ops.cast_to_fp8(x).view(torch.uint8), x.to(torch.float8_e4m3fn).view(torch.uint8))
    assert torch.equal(ops.cast_to_fp8(x.cpu()).view(torch.uint8).cuda(), ops.cast_to_fp8(x).view(torch.uint8))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("rows,dim", [(1, 64), (19, 4096), (33, 999)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_cuda_rmsnorm_quant_fp8_matches_rmsnorm_then_quantize(dtype, rows, dim, with_residual):
    g = torch.Generator(device="cuda").manual_seed(rows + dim)
    x = torch.randn(rows, dim, device="cuda", generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(dim, device="cuda", generator=g)).to(dtype)
    res = torch.randn(rows, dim, device="cuda", generator=g).to(dtype) if with_residual else None
    res_ref = None if res is None else res.clone()
    want_q, want_s = formats.quantize_activation_fp8(ops.rmsnorm(x, w, 1e-5, residual=res_ref))
    got_q, got_s = ops.rmsnorm_quant_fp8(x, w, 1e-5, residual=res)
    torch.cuda.synchronize()
    # Same arithmetic as the rmsnorm kernel: equal bits are expected; allow one fp8 step should
    # the compiler contract differently, and demand the scales agree to float32 rounding.
    torch.testing.assert_close(got_s, want_s, rtol=1e-6, atol=0)
    step = want_q.float().abs() * 0.125 + 2.0 ** -9
    assert ((got_q.float() - want_q.float()).abs() <= step).all()
    if with_residual:
        assert torch.equal(res, res_ref)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n,k", [(64, 256), (4096 // 8, 4096), (19, 96)])
@pytest.mark.parametrize("m", [1, 32, 300])
def test_cuda_fp8_linear_matches_reference(dtype, n, k, m):
    if not fp8_capable():
        pytest.skip("fp8 matmuls need compute capability >= 8.9")
    qw = quantized("fp8", n, k, seed=m + n)
    x = torch.randn(m, k, device="cuda").to(dtype)
    y = ops.fp8_linear(x, qw.qweight, qw.scale)
    want = formats.reference_linear(x.float(), qw)                 # float32 result of the spec
    torch.cuda.synchronize()
    assert y.dtype == dtype and y.shape == (m, n)
    # the fp8 GEMM returns bf16: one bf16 rounding of each output, then the cast to dtype
    torch.testing.assert_close(y.float(), want, rtol=1e-2, atol=1e-2 * want.abs().max().item())


def test_cuda_fp8_linear_needs_sm89(monkeypatch):
    qw = quantized("fp8", 32, 64, seed=1)
    x = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))
    with pytest.raises(RuntimeError, match="8.9"):
        ops.fp8_linear(x, qw.qweight, qw.scale)


def test_cuda_quant_matmul_rejects_shapes_it_cannot_take():
    from illada_rt import _C
    qw = quantized("int8", 32, 96, seed=2)                         # K = 96 is not a multiple of 64
    x = torch.randn(4, 96, device="cuda", dtype=torch.bfloat16)
    y = torch.empty(4, 32, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="multiple of 64"):
        _C.quant_matmul(ops._arg(y, "y"), ops._arg(x, "x"), ops._arg(qw.qweight, "qweight"),
                        ops._arg(qw.scale, "scale"), None, 0, ops._stream(x))


def test_cuda_rmsnorm_quant_then_fp8_matmul_block_rows():
    """The fused path a model layer takes: rmsnorm_quant_fp8 on [B, L, K], then fp8_matmul."""
    if not fp8_capable():
        pytest.skip("fp8 matmuls need compute capability >= 8.9")
    qw = quantized("fp8", 256, 512, seed=9)
    x = torch.randn(2, 32, 512, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(512, device="cuda", dtype=torch.bfloat16)
    xq, a_scale = ops.rmsnorm_quant_fp8(x, w, 1e-5)
    y = ops.fp8_matmul(xq, a_scale, qw.qweight, qw.scale, torch.bfloat16)
    want = formats.reference_linear(ops.rmsnorm(x, w, 1e-5).float(), qw)
    torch.cuda.synchronize()
    assert y.shape == (2, 32, 256)
    torch.testing.assert_close(y.float(), want, rtol=1e-2, atol=1e-2 * want.abs().max().item())
