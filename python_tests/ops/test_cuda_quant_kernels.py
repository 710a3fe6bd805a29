"""CUDA quantized-weight ops against illada_rt.quant.formats, for both implementations of the pass
(the `kernels` fixture: the compiled kernels, then the torch twins, on device tensors); skipped
without a GPU or a CUDA build. Inputs and weights are drawn on the device.

Covers the compiled tensor-core matmul (by default up to QUANT_MATMUL_MAX_M rows, and at any M
with path="kernel"; bf16/fp16; the twin has no such path and refuses path="kernel"), the
dequantize + cuBLAS path (large M, float32, shapes the kernel does not take), the fp8 activation
ops (bit-exact with torch's quantization of the same rows), the saturating fp8 cast and fp8_linear.
"""
import pytest
import torch

from illada_rt import build_info, ops
from illada_rt.quant import formats

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (torch.cuda.is_available() and build_info()["cuda"] and ops.cuda_devices()[0] > 0),
                                 reason="needs a CUDA device and a CUDA build")]

FLOATS = [torch.float32, torch.bfloat16, torch.float16]
NO_KERNEL = "path='kernel'.*torch implementation .* has no kernel"   # the twin's refusal of path="kernel"


def quantized(fmt, n, k, seed, group_size=128, zero_point=True):
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=g) * k ** -0.5
    return formats.quantize_weight(w, fmt, group_size=group_size, zero_point=zero_point)


def cuda_generator(seed):
    return torch.Generator(device="cuda").manual_seed(seed)


def int_linear(kernels, x, qw, out=None, path="auto"):
    if qw.format == "int8":
        return kernels.int8_linear(x, qw.qweight, qw.scale, out=out, path=path)
    return kernels.int4_linear(x, qw.qweight, qw.scale, qw.zero, qw.group_size, out=out, path=path)


def saturating_fp8(x):
    """torch's round-to-nearest-even e4m3 cast with the kernels' saturation: |x| >= 448 (infinities
    too) becomes +-448, NaN stays NaN with its sign. torch before 2.12 does not saturate by itself
    (|x| >= 464 and infinities become NaN there), so the clamp is explicit and the oracle holds on
    every torch (the same helper as test_quant_kernels.py's, computed here on the device)."""
    x = x.float()
    return torch.where(x.abs() >= 448.0, torch.copysign(torch.full_like(x, 448.0), x), x).to(torch.float8_e4m3fn)


def fp8_bits(t):
    return t.view(torch.uint8)


def fp8_capable():
    return torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("fmt,n,k,group_size", [("int8", 19, 384, 0), ("int8", 7, 100, 0), ("int4", 19, 384, 32),
                                                ("int4", 5, 12, 2), ("int4", 33, 96, 96)])
@pytest.mark.parametrize("padded_out", [False, True])
def test_cuda_dequantize_matches_formats(kernels, dtype, fmt, n, k, group_size, padded_out):
    """Vectorized (K % 8 == 0, aligned rows) and per-element kernels, into a poisoned out."""
    qw = quantized(fmt, n, k, seed=n + k, group_size=group_size or 32)
    out = torch.full((n, k + 1 if padded_out else k), float("nan"), dtype=dtype, device="cuda")[:, :k]
    if fmt == "int8":
        got = kernels.dequantize_int8(qw.qweight, qw.scale, dtype, out=out)
    else:
        got = kernels.dequantize_int4(qw.qweight, qw.scale, qw.zero, group_size, dtype, out=out)
    torch.cuda.synchronize()
    assert got is out
    torch.testing.assert_close(got, formats.dequantize(qw, dtype), rtol=0, atol=0)


# (n, k, group_size): kernel shapes (K % 128 == 0, G % 32 == 0, odd N) and one the kernel does not take.
SHAPES = [(19, 256, 32), (130, 384, 128), (64, 4096, 128), (40, 512, 64), (19, 96, 32)]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("fmt,zero_point", [("int8", True), ("int4", True), ("int4", False)])
@pytest.mark.parametrize("n,k,group_size", SHAPES)
@pytest.mark.parametrize("m", [1, 7, 16, 33, 64, 65, 300])
def test_cuda_int_linear_matches_reference(kernels, dtype, fmt, zero_point, n, k, group_size, m):
    qw = quantized(fmt, n, k, seed=n * k + m, group_size=group_size, zero_point=zero_point)
    x = torch.randn(m, k, device="cuda", generator=cuda_generator(m)).to(dtype)
    out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
    y = int_linear(kernels, x, qw, out=out)
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
def test_cuda_int_linear_kernel_and_dequant_paths_agree(kernels, dtype, fmt, m):
    """path="kernel" at any M (the crossover bench times it past QUANT_MATMUL_MAX_M) and
    path="dequant" at any M both stay within twice torch's own error in the same precision.
    The torch twin has no kernel path: it refuses path="kernel" and writes nothing."""
    n, k = 130, 512
    qw = quantized(fmt, n, k, seed=m + 17)
    x = torch.randn(m, k, device="cuda", generator=cuda_generator(m)).to(dtype)
    ref32 = x.float() @ formats.dequantize(qw).t()
    torch_err = ((x @ formats.dequantize(qw, dtype).t()).float() - ref32).abs().max().item()
    paths = ("kernel", "dequant")
    if kernels.choice["quant"] == "torch":
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        with pytest.raises(ValueError, match=NO_KERNEL):
            int_linear(kernels, x, qw, out=out, path="kernel")
        assert out.isnan().all()
        paths = ("dequant",)
    for path in paths:
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        y = int_linear(kernels, x, qw, out=out, path=path)
        torch.cuda.synchronize()
        assert not y.isnan().any(), path
        assert (y.float() - ref32).abs().max().item() <= 2 * torch_err + 1e-5 * ref32.abs().max().item(), path


def test_cuda_int_linear_kernel_path_names_what_it_cannot_take(kernels):
    # The compiled op names the requirement it misses; the twin refuses path="kernel" outright.
    twin = kernels.choice["quant"] == "torch"
    qw = quantized("int4", 32, 96, seed=2, group_size=32)   # K = 96 is not a multiple of 128
    x = torch.randn(4, 96, device="cuda", generator=cuda_generator(2)).to(torch.bfloat16)
    with pytest.raises(ValueError, match=NO_KERNEL if twin else "K = 96"):
        int_linear(kernels, x, qw, path="kernel")
    qw8 = quantized("int8", 32, 128, seed=3)
    with pytest.raises(ValueError, match=NO_KERNEL if twin else "float32"):
        int_linear(kernels, torch.randn(4, 128, device="cuda", generator=cuda_generator(3)), qw8, path="kernel")


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_cuda_int_linear_batched_block_rows(kernels, fmt):
    """[B, L, K] input as the model passes it (B * L = 2 * 32 rows: the compiled kernel path)."""
    qw = quantized(fmt, 4096 // 16, 1024, seed=3)
    x = torch.randn(2, 32, 1024, device="cuda", generator=cuda_generator(4)).to(torch.bfloat16)
    out = torch.full((2, 32, 4096 // 16), float("nan"), dtype=torch.bfloat16, device="cuda")
    y = int_linear(kernels, x, qw, out=out)
    assert y is out and not y.isnan().any()
    ref32 = x.float() @ formats.dequantize(qw).t()
    low = (x @ formats.dequantize(qw, torch.bfloat16).t()).float()
    assert (y.float() - ref32).abs().max() <= 2 * (low - ref32).abs().max() + 1e-5


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("rows,dim", [(1, 64), (19, 4096), (111, 999)])
def test_cuda_quantize_fp8_per_token_matches_formats(kernels, dtype, rows, dim):
    g = torch.Generator(device="cuda").manual_seed(rows * dim)
    x = (torch.randn(rows, dim, device="cuda", generator=g)
         * torch.logspace(-3, 3, rows, device="cuda")[:, None]).to(dtype)
    x[0] = 0.0
    xq = torch.full((rows, dim), 0x7f, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)
    a_scale = torch.full((rows,), float("nan"), device="cuda")
    got_q, got_s = kernels.quantize_fp8_per_token(x, out=(xq, a_scale))
    want_q, want_s = formats.quantize_activation_fp8(x)
    torch.cuda.synchronize()
    assert got_q is xq and got_s is a_scale
    assert torch.equal(xq.view(torch.uint8), want_q.view(torch.uint8))
    assert torch.equal(a_scale, want_s)


# (float32 edge, its e4m3 bits spelled out, or None where the oracle alone decides): the saturation
# boundary (448 and above, infinities too, become +-448: 0x7e / 0xfe), NaN of both signs (kept:
# 0x7f / 0xff), zeros, and subnormal fp8 steps with their midpoints.
EDGES = [(0.0, 0x00), (-0.0, 0x80), (448.0, 0x7e), (-448.0, 0xfe), (449.0, 0x7e), (463.9, 0x7e), (464.0, 0x7e),
         (465.0, 0x7e), (480.0, 0x7e), (-480.0, 0xfe), (1e9, 0x7e), (-1e9, 0xfe), (float("inf"), 0x7e),
         (float("-inf"), 0xfe), (float("nan"), 0x7f), (-float("nan"), 0xff),
         (2.0 ** -9, None), (2.0 ** -10, None), (1.5 * 2.0 ** -10, None), (2.0 ** -6 - 2.0 ** -11, None)]


def float32_patterns():
    """float32 [N] on the device: 4M random bit patterns (every sign, exponent, NaN payload), then EDGES."""
    bits = torch.randint(-(1 << 31), 1 << 31, (1 << 22,), dtype=torch.int64, device="cuda",
                         generator=cuda_generator(22))
    edges = torch.tensor([value for value, _ in EDGES], device="cuda")
    return torch.cat([bits.to(torch.int32).view(torch.float32), edges])


def test_cuda_cast_fp8_matches_torch(kernels):
    x = float32_patterns()
    got = fp8_bits(kernels.cast_to_fp8(x))
    bad = (got != fp8_bits(saturating_fp8(x))).nonzero()
    assert bad.numel() == 0, f"{bad.numel()} mismatches, first input {x[bad[0]].item()!r}"
    assert torch.equal(fp8_bits(ops.cast_to_fp8(x.cpu())).cuda(), got)       # the compiled CPU conversion
    edge_bits = got[-len(EDGES):].tolist()
    assert [(value, bits) for (value, want), bits in zip(EDGES, edge_bits) if want is not None and bits != want] == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_cast_fp8_matches_torch_over_all_16bit_values(kernels, dtype):
    x = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32, device="cuda").to(torch.int16).view(dtype)
    assert torch.equal(fp8_bits(kernels.cast_to_fp8(x)), fp8_bits(saturating_fp8(x)))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("rows,dim", [(1, 64), (19, 4096), (33, 999)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_cuda_rmsnorm_quant_fp8_matches_rmsnorm_then_quantize(kernels, dtype, rows, dim, with_residual):
    g = torch.Generator(device="cuda").manual_seed(rows + dim)
    x = torch.randn(rows, dim, device="cuda", generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(dim, device="cuda", generator=g)).to(dtype)
    res = torch.randn(rows, dim, device="cuda", generator=g).to(dtype) if with_residual else None
    res_ref = None if res is None else res.clone()
    want_q, want_s = formats.quantize_activation_fp8(kernels.rmsnorm(x, w, 1e-5, residual=res_ref))
    xq = torch.full((rows, dim), 0x7f, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)  # NaN
    a_scale = torch.full((rows,), float("nan"), device="cuda")
    got_q, got_s = kernels.rmsnorm_quant_fp8(x, w, 1e-5, residual=res, out=(xq, a_scale))
    torch.cuda.synchronize()
    # Same arithmetic as the rmsnorm kernel: equal bits are expected; allow one fp8 step should
    # the compiler contract differently, and demand the scales agree to float32 rounding.
    assert got_q is xq and got_s is a_scale
    torch.testing.assert_close(got_s, want_s, rtol=1e-6, atol=0)
    step = want_q.float().abs() * 0.125 + 2.0 ** -9
    assert ((got_q.float() - want_q.float()).abs() <= step).all()
    if with_residual:
        assert torch.equal(res, res_ref)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n,k", [(64, 256), (4096 // 8, 4096), (19, 96)])
@pytest.mark.parametrize("m", [1, 32, 300])
def test_cuda_fp8_linear_matches_reference(kernels, dtype, n, k, m):
    if not fp8_capable():
        pytest.skip("fp8 matmuls need compute capability >= 8.9")
    qw = quantized("fp8", n, k, seed=m + n)
    x = torch.randn(m, k, device="cuda", generator=cuda_generator(m * k + n)).to(dtype)
    y = kernels.fp8_linear(x, qw.qweight, qw.scale)
    want = formats.reference_linear(x.float(), qw)                 # float32 result of the spec
    torch.cuda.synchronize()
    assert y.dtype == dtype and y.shape == (m, n)
    # the fp8 GEMM returns bf16: one bf16 rounding of each output, then the cast to dtype
    torch.testing.assert_close(y.float(), want, rtol=1e-2, atol=1e-2 * want.abs().max().item())


def test_cuda_fp8_linear_needs_sm89(kernels, monkeypatch):
    qw = quantized("fp8", 32, 64, seed=1)
    x = torch.randn(4, 64, device="cuda", generator=cuda_generator(1)).to(torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))
    with pytest.raises(RuntimeError, match="8.9"):
        kernels.fp8_linear(x, qw.qweight, qw.scale)


def test_cuda_quant_matmul_rejects_shapes_it_cannot_take(kernels):
    if kernels.choice["quant"] == "torch":
        pytest.skip("compiled only: the CUDA binding's own shape check (_C.quant_matmul); the torch twin has no kernel")
    from illada_rt import _C
    qw = quantized("int8", 32, 96, seed=2)                         # K = 96 is not a multiple of 64
    x = torch.randn(4, 96, device="cuda", generator=cuda_generator(2)).to(torch.bfloat16)
    y = torch.empty(4, 32, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="multiple of 64"):
        _C.quant_matmul(ops._arg(y, "y"), ops._arg(x, "x"), ops._arg(qw.qweight, "qweight"),
                        ops._arg(qw.scale, "scale"), None, 0, ops._stream(x))


def test_cuda_rmsnorm_quant_then_fp8_matmul_block_rows(kernels):
    """The fused path a model layer takes: rmsnorm_quant_fp8 on [B, L, K], then fp8_matmul."""
    if not fp8_capable():
        pytest.skip("fp8 matmuls need compute capability >= 8.9")
    qw = quantized("fp8", 256, 512, seed=9)
    g = cuda_generator(9)
    x = torch.randn(2, 32, 512, device="cuda", generator=g).to(torch.bfloat16)
    w = (1 + 0.1 * torch.randn(512, device="cuda", generator=g)).to(torch.bfloat16)
    xq, a_scale = kernels.rmsnorm_quant_fp8(x, w, 1e-5)
    y = ops.fp8_matmul(xq, a_scale, qw.qweight, qw.scale, torch.bfloat16)
    want = formats.reference_linear(kernels.rmsnorm(x, w, 1e-5).float(), qw)
    torch.cuda.synchronize()
    assert y.shape == (2, 32, 256)
    torch.testing.assert_close(y.float(), want, rtol=1e-2, atol=1e-2 * want.abs().max().item())
