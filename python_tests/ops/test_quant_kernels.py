"""CPU quantized-weight kernels (dequantize, int8/int4/fp8 linear, fp8 activations) against
illada_rt.quant.formats, the executable spec, and the fp8 cast against torch's own."""
import json
import os
import subprocess
import sys

import pytest
import torch

from illada_rt import ops, reference
from illada_rt.quant import formats

FLOATS = [torch.float32, torch.bfloat16, torch.float16]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rand_weight(n, k, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * k ** -0.5).to(dtype)


def quantized(fmt, n, k, seed, group_size=32, zero_point=True):
    return formats.quantize_weight(rand_weight(n, k, seed), fmt, group_size=group_size, zero_point=zero_point)


def int_linear(kernels, x, qw, out=None):
    if qw.format == "int8":
        return kernels.int8_linear(x, qw.qweight, qw.scale, out=out)
    return kernels.int4_linear(x, qw.qweight, qw.scale, qw.zero, qw.group_size, out=out)


def fp8_bits(t):
    return t.view(torch.uint8)


# ---- the fp8 e4m3 conversion -------------------------------------------------------------------

def float_patterns():
    """Float32 bit patterns covering every exponent, every fp8 rounding boundary and its neighbours
    (midpoints are low-20-bit 0x80000 patterns; +-1 ulp around them), subnormals, inf and NaN."""
    hi = torch.arange(0, 1 << 16, dtype=torch.int64) << 16
    lo = torch.tensor([0, 1, 0x7fff, 0x8000, 0x8001, 0xffff], dtype=torch.int64)
    g = torch.Generator().manual_seed(7)
    rand = torch.randint(0, 1 << 32, (1 << 20,), generator=g, dtype=torch.int64)
    bits = torch.cat([(hi[:, None] | lo[None, :]).reshape(-1), rand])
    return as_signed(bits, 32).to(torch.int32).view(torch.float32)


def as_signed(bits, width):
    """Unsigned bit patterns (int64) -> the signed integers of `width` bits with those bits."""
    return torch.where(bits >= 1 << (width - 1), bits - (1 << width), bits)


def saturating_fp8(x):
    """torch's round-to-nearest-even e4m3 cast with the kernels' saturation: |x| >= 448 (infinities
    too) becomes +-448, NaN stays NaN. torch before 2.12 does not saturate by itself (|x| >= 464 and
    infinities become NaN there), so the clamp is explicit and the oracle holds on every torch."""
    x = x.float()
    return torch.where(x.abs() >= 448.0, torch.copysign(torch.full_like(x, 448.0), x), x).to(torch.float8_e4m3fn)


def test_cast_fp8_matches_torch_over_float32_patterns(kernels):
    x = float_patterns()
    got, want = fp8_bits(kernels.cast_to_fp8(x)), fp8_bits(saturating_fp8(x))
    bad = (got != want).nonzero()
    assert bad.numel() == 0, f"{bad.numel()} mismatches, first input {x[bad[0]].item()!r}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cast_fp8_matches_torch_over_all_16bit_values(kernels, dtype):
    x = as_signed(torch.arange(0, 1 << 16), 16).to(torch.int16).view(dtype)
    assert torch.equal(fp8_bits(kernels.cast_to_fp8(x)), fp8_bits(saturating_fp8(x)))


def test_cast_fp8_edges(kernels):
    x = torch.tensor([0.0, -0.0, 448.0, 464.0, 465.0, 480.0, -1e9, float("inf"), float("-inf"), float("nan"),
                      2.0 ** -9, 2.0 ** -10, 1.5 * 2.0 ** -10, 2.0 ** -6 - 2.0 ** -11])
    assert torch.equal(fp8_bits(kernels.cast_to_fp8(x)), fp8_bits(saturating_fp8(x)))
    # the saturation itself, spelled out: 464, 480, -1e9 and the infinities are +-448 (0x7e / 0xfe)
    assert fp8_bits(kernels.cast_to_fp8(x))[[3, 4, 5, 6, 7, 8]].tolist() == [0x7e, 0x7e, 0x7e, 0xfe, 0x7e, 0xfe]


# ---- dequantize ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("fmt,group_size,zero_point", [("int8", 0, True), ("int4", 32, True), ("int4", 32, False),
                                                        ("int4", 2, True), ("int4", 96, True)])
@pytest.mark.parametrize("n,k", [(19, 96), (1, 192), (64, 288)])
def test_dequantize_matches_formats(kernels, dtype, fmt, group_size, zero_point, n, k):
    if fmt == "int4" and k % group_size:
        pytest.skip("group size does not divide K")
    qw = quantized(fmt, n, k, seed=n * k + group_size, group_size=group_size or 32, zero_point=zero_point)
    out = torch.full((n, k), float("nan"), dtype=dtype)
    if fmt == "int8":
        got = kernels.dequantize_int8(qw.qweight, qw.scale, dtype, out=out)
    else:
        got = kernels.dequantize_int4(qw.qweight, qw.scale, qw.zero, qw.group_size, dtype, out=out)
    assert got is out
    torch.testing.assert_close(got, formats.dequantize(qw, dtype), rtol=0, atol=0)


def test_dequantize_int4_noncontiguous_scale_and_weight(kernels):
    qw = quantized("int4", 19, 128, seed=3)
    q_t = qw.qweight.t().contiguous().t()               # same values, column-major
    s_t = qw.scale.t().contiguous().t()
    got = kernels.dequantize_int4(q_t, s_t, qw.zero, 32)
    torch.testing.assert_close(got, formats.dequantize(qw), rtol=0, atol=0)


# ---- int8 / int4 linear ---------------------------------------------------------------------------

def lowprec_tolerance(dtype, x, qw):
    """max|torch in dtype - float32 reference|, the error our result may have twice over."""
    ref32 = x.float() @ formats.dequantize(qw).t()
    low = (x @ formats.dequantize(qw, dtype).t()).float()
    return ref32, (low - ref32).abs().max().item()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("fmt,zero_point", [("int8", True), ("int4", True), ("int4", False)])
@pytest.mark.parametrize("m", [1, 7, 33])
def test_int_linear_matches_reference(kernels, dtype, fmt, zero_point, m):
    n, k = 19, 96
    qw = quantized(fmt, n, k, seed=m, zero_point=zero_point)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m + 1)).to(dtype)
    out = torch.full((m, n), float("nan"), dtype=dtype)
    y = int_linear(kernels, x, qw, out=out)
    assert y is out and y.dtype == dtype and not y.isnan().any()
    want = formats.reference_linear(x, qw)
    if dtype == torch.float32:
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    else:
        ref32, torch_err = lowprec_tolerance(dtype, x, qw)
        assert (y.float() - ref32).abs().max().item() <= 2 * torch_err + 1e-6


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_int_linear_leading_dims_and_strided_x(kernels, fmt):
    qw = quantized(fmt, 40, 128, seed=5)
    base = torch.randn(2, 3, 256)
    x = base[..., ::2]                                   # non-contiguous last dim
    y = int_linear(kernels, x, qw)
    assert y.shape == (2, 3, 40)
    torch.testing.assert_close(y, formats.reference_linear(x.contiguous(), qw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_int_linear_paths_on_the_cpu(kernels, fmt):
    """The CPU runs the dequant path whatever `path` says, except "kernel", which it cannot take
    (nor can the torch twins anywhere)."""
    qw = quantized(fmt, 24, 128, seed=8)
    x = torch.randn(5, 128)
    call = (lambda **kw: kernels.int8_linear(x, qw.qweight, qw.scale, **kw)) if fmt == "int8" else \
        (lambda **kw: kernels.int4_linear(x, qw.qweight, qw.scale, qw.zero, qw.group_size, **kw))
    torch.testing.assert_close(call(path="dequant"), call(path="auto"), rtol=0, atol=0)
    why = "not on a CUDA device" if kernels.choice["quant"] == "custom" else "torch implementation .* has no kernel"
    with pytest.raises(ValueError, match="path='kernel'.*" + why):
        call(path="kernel")
    with pytest.raises(ValueError, match="path must be one of"):
        call(path="fast")


@pytest.mark.parametrize("value,expect", [("", "64"), ("7", "7"), ("0", "0"), ("abc", "ILLADA_QUANT_MATMUL_MAX_M"),
                                          ("-3", "expected a row count")])
def test_quant_matmul_max_m_from_the_environment(value, expect):
    env = dict(os.environ, ILLADA_QUANT_MATMUL_MAX_M=value, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", "from illada_rt import ops; print(ops.QUANT_MATMUL_MAX_M)"],
                          env=env, capture_output=True, text=True, timeout=120)
    if expect.isdigit():
        assert done.returncode == 0 and done.stdout.strip() == expect, done.stderr
    else:
        assert done.returncode != 0 and "ValueError" in done.stderr and expect in done.stderr


# ---- fp8 activations and fp8 linear ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("rows,dim", [(1, 64), (7, 96), (33, 1000)])
def test_quantize_fp8_per_token_matches_formats(kernels, dtype, rows, dim):
    g = torch.Generator().manual_seed(rows * dim)
    x = (torch.randn(rows, dim, generator=g) * torch.logspace(-3, 3, rows)[:, None]).to(dtype)
    x[0, :] = 0.0                                        # an all-zero row: the 1e-12 scale floor
    xq = torch.full((rows, dim), 0x7f, dtype=torch.uint8).view(torch.float8_e4m3fn)  # poisoned (NaN)
    a_scale = torch.full((rows,), float("nan"))
    got_q, got_s = kernels.quantize_fp8_per_token(x, out=(xq, a_scale))
    want_q, want_s = formats.quantize_activation_fp8(x)
    assert got_q is xq and got_s is a_scale
    assert torch.equal(fp8_bits(got_q), fp8_bits(want_q))
    assert torch.equal(got_s, want_s)


def test_quantize_fp8_nan_row_propagates_like_torch(kernels):
    x = torch.randn(3, 40)
    x[1, 5] = float("nan")
    got_q, got_s = kernels.quantize_fp8_per_token(x)
    want_q, want_s = formats.quantize_activation_fp8(x)
    assert torch.equal(fp8_bits(got_q), fp8_bits(want_q))
    torch.testing.assert_close(got_s, want_s, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("rows,dim", [(1, 64), (19, 96), (5, 999)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rmsnorm_quant_fp8_matches_rmsnorm_then_quantize(kernels, dtype, rows, dim, with_residual):
    g = torch.Generator().manual_seed(rows + dim)
    x = torch.randn(rows, dim, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(dim, generator=g)).to(dtype)
    res = torch.randn(rows, dim, generator=g).to(dtype) if with_residual else None
    res_ref = None if res is None else res.clone()
    h = kernels.rmsnorm(x, w, 1e-5, residual=res_ref)
    torch.testing.assert_close(h.float(), reference.rms_norm((x.float() if res is None else res_ref.float()),
                                                             w.float(), 1e-5), rtol=2e-2, atol=2e-2)
    want_q, want_s = formats.quantize_activation_fp8(h)
    got_q, got_s = kernels.rmsnorm_quant_fp8(x, w, 1e-5, residual=res)
    assert torch.equal(fp8_bits(got_q), fp8_bits(want_q))
    assert torch.equal(got_s, want_s)
    if with_residual:
        assert torch.equal(res, res_ref)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("m", [1, 7, 33])
def test_fp8_linear_matches_reference(kernels, dtype, m):
    n, k = 19, 96
    qw = quantized("fp8", n, k, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype)
    y = kernels.fp8_linear(x, qw.qweight, qw.scale)
    want = formats.reference_linear(x, qw)
    assert y.dtype == dtype
    torch.testing.assert_close(y, want, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-5)


def test_fp8_linear_leading_dims(kernels):
    qw = quantized("fp8", 24, 64, seed=1)
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(kernels.fp8_linear(x, qw.qweight, qw.scale), formats.reference_linear(x, qw),
                               rtol=1e-5, atol=1e-5)


# ---- bad input ------------------------------------------------------------------------------------

def test_bad_inputs_raise_value_errors_naming_the_argument(kernels):
    q8, q4, qf = quantized("int8", 19, 96, 1), quantized("int4", 19, 96, 2), quantized("fp8", 19, 96, 3)
    x = torch.randn(4, 96)
    cases = [
        (lambda: kernels.int8_linear(x, q8.qweight.float(), q8.scale), "qweight"),
        (lambda: kernels.int8_linear(x, q8.qweight, q8.scale[:5]), "scale"),
        (lambda: kernels.int8_linear(x, q8.qweight, q8.scale.double()), "scale"),
        (lambda: kernels.int8_linear(torch.randn(4, 95), q8.qweight, q8.scale), "x"),
        (lambda: kernels.int8_linear(x.long(), q8.qweight, q8.scale), "x"),
        (lambda: kernels.int8_linear(x, q8.qweight, q8.scale, out=torch.empty(4, 18)), "out"),
        (lambda: kernels.int4_linear(x, q4.qweight, q4.scale, q4.zero, 30), "group_size"),
        (lambda: kernels.int4_linear(x, q4.qweight, q4.scale, q4.zero, 0), "group_size"),
        (lambda: kernels.int4_linear(x, q4.qweight.view(torch.int8), q4.scale, q4.zero, 32), "qweight"),
        (lambda: kernels.int4_linear(x, q4.qweight, q4.scale, q4.zero[:, :1], 32), "zero"),
        (lambda: kernels.fp8_linear(x, qf.qweight.float(), qf.scale), "qweight"),
        (lambda: kernels.fp8_linear(x[:, :90], qf.qweight, qf.scale), "x"),
        (lambda: kernels.dequantize_int8(q8.qweight, q8.scale, torch.int32), "dtype"),
        (lambda: kernels.rmsnorm_quant_fp8(x, torch.ones(95), 1e-5), "weight"),
        (lambda: kernels.rmsnorm_quant_fp8(x, torch.ones(96), 1e-5, residual=torch.zeros(4, 95)), "residual"),
        (lambda: kernels.quantize_fp8_per_token(x.long()), "x"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()


def test_compiled_checks_reject_bad_tensors():
    from illada_rt import _C
    q8 = quantized("int8", 8, 64, 1)
    out = torch.empty(8, 64)
    with pytest.raises(ValueError, match="zero"):
        _C.dequantize(ops._arg(out, "out"), ops._arg(q8.qweight, "qweight"), ops._arg(q8.scale, "scale"),
                      ops._arg(q8.scale, "zero"), 0, 0)
    with pytest.raises(ValueError, match="CUDA only"):
        _C.quant_matmul(ops._arg(out.bfloat16()[:, :8], "y"), ops._arg(out.bfloat16(), "x"),
                        ops._arg(q8.qweight, "qweight"), ops._arg(q8.scale, "scale"), None, 0, 0)


def test_fp8_matmul_on_cpu_is_the_float_spec(kernels):
    qw = quantized("fp8", 16, 32, 4)
    xq, a_scale = kernels.rmsnorm_quant_fp8(torch.randn(2, 3, 32), torch.ones(32), 1e-5)   # [B, L, K] rows
    y = ops.fp8_matmul(xq, a_scale, qw.qweight, qw.scale, torch.float32)
    want = (xq.float() @ qw.qweight.float().t()) * a_scale[..., None] * qw.scale
    assert y.shape == (2, 3, 16)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="a_scale"):
        ops.fp8_matmul(xq, a_scale[:, :2], qw.qweight, qw.scale, torch.float32)
    with pytest.raises(ValueError, match="out_dtype"):
        ops.fp8_matmul(xq, a_scale, qw.qweight, qw.scale, torch.int32)


class FakeScaledMM:
    """Stands in for torch._scaled_mm on the CPU: the product in float32, then the scales;
    row-wise scales (more than one element) raise as a torch build without that kernel does."""

    def __init__(self, rowwise: bool):
        self.rowwise, self.calls = rowwise, []

    def __call__(self, a, b, scale_a, scale_b, out_dtype):
        self.calls.append("rowwise" if scale_a.numel() > 1 else "tensorwise")
        if scale_a.numel() > 1 and not self.rowwise:
            raise RuntimeError("Rowwise scaling is not currently supported on your device")
        return ((a.float() @ b.float()) * scale_a * scale_b).to(out_dtype)


@pytest.mark.parametrize("rowwise", [True, False])
def test_fp8_gemm_falls_back_to_tensorwise_scales_once(kernels, monkeypatch, rowwise):
    """Torch builds without the row-wise fp8 GEMM: the first call warns, every call still gives
    the spec's product, and later calls go straight to the tensor-wise GEMM."""
    from illada_rt.ops import quant as quant_ops
    fake = FakeScaledMM(rowwise)
    monkeypatch.setattr(torch, "_scaled_mm", fake)
    monkeypatch.setattr(quant_ops, "_NO_ROWWISE_FP8", set())
    qw = quantized("fp8", 48, 32, 5)
    xq, a_scale = kernels.quantize_fp8_per_token(torch.randn(7, 32))
    want = (xq.float() @ qw.qweight.float().t()) * a_scale[:, None] * qw.scale
    for call in range(2):
        if rowwise or call:
            y = quant_ops._fp8_gemm(xq, qw.qweight, a_scale[:, None], qw.scale)
        else:
            with pytest.warns(RuntimeWarning, match="row-wise"):
                y = quant_ops._fp8_gemm(xq, qw.qweight, a_scale[:, None], qw.scale)
        tol = dict(rtol=1e-2, atol=1e-2) if rowwise else dict(rtol=1e-6, atol=1e-6)  # bf16 / float32 result
        torch.testing.assert_close(y.float(), want, **tol)
    assert fake.calls == (["rowwise"] * 2 if rowwise else ["rowwise", "tensorwise", "tensorwise"])


def test_fp8_gemm_out_of_memory_is_not_a_fallback(kernels, monkeypatch):
    from illada_rt.ops import quant as quant_ops

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(torch, "_scaled_mm", out_of_memory)
    monkeypatch.setattr(quant_ops, "_NO_ROWWISE_FP8", set())
    qw = quantized("fp8", 16, 32, 6)
    xq, a_scale = kernels.quantize_fp8_per_token(torch.randn(3, 32))
    with pytest.raises(torch.OutOfMemoryError):
        quant_ops._fp8_gemm(xq, qw.qweight, a_scale[:, None], qw.scale)
    assert not quant_ops._NO_ROWWISE_FP8


# ---- the benchmark script ---------------------------------------------------------------------------

def test_bench_quant_matmul_cpu_smoke(tmp_path):
    out = tmp_path / "quant.json"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_quant_matmul.py"), "--device", "cpu",
                    "--warmup", "1", "--repeats", "2", "--group-size", "32", "--out", str(out)],
                   check=True, env=env, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    formats_seen = {r["format"] for r in result["rows"]}
    assert {"int8", "int4", "fp8", "float32"} <= formats_seen
    for r in result["rows"]:
        assert r["ms"] > 0 and r["tflops"] > 0 and r["weight_gbps"] > 0


def test_bench_quant_matmul_crossover_is_the_last_m_of_an_unbroken_run_of_kernel_wins():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import bench_quant_matmul as bqm
    finally:
        sys.path.pop(0)

    def timed(fmt, n, m, kernel_ms, dequant_ms):
        return [dict(format=fmt, path="kernel", n=n, k=64, m=m, ms=kernel_ms),
                dict(format=fmt, path="dequant", n=n, k=64, m=m, ms=dequant_ms)]
    rows = (timed("int8", 8, 32, 1, 2) + timed("int8", 8, 64, 1, 2) + timed("int8", 8, 128, 3, 2)
            + timed("int8", 8, 256, 1, 2)                                    # a later win does not count
            + timed("int8", 16, 32, 1, 2) + timed("int8", 16, 64, 1, 2) + timed("int8", 16, 128, 1, 2)
            + [dict(format="int8", path="dequant", n=16, k=64, m=4096, ms=5.0),  # no kernel row: not compared
               dict(format="int8", path="kernel", n=16, k=64, m=512, skipped="K")])
    cross = bqm.crossover(rows)
    assert cross == {"int8 8x64": 64, "int8 16x64": 128, "max_m": 64}
    assert bqm.crossover(rows + timed("int4", 8, 32, 3, 2))["max_m"] == 0
    assert bqm.crossover([])["max_m"] is None


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_dequantize_into_strided_out_rows(kernels, fmt):
    qw = quantized(fmt, 9, 64, seed=11)
    buf = torch.full((9, 70), float("nan"))
    out = buf[:, 3:67]
    if fmt == "int8":
        kernels.dequantize_int8(qw.qweight, qw.scale, out=out)
    else:
        kernels.dequantize_int4(qw.qweight, qw.scale, qw.zero, 32, out=out)
    torch.testing.assert_close(out, formats.dequantize(qw), rtol=0, atol=0)
    assert buf[:, :3].isnan().all() and buf[:, 67:].isnan().all()
