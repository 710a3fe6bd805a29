// Bindings for the quantized-weight families: dequantize, the small-M quantized matmul (CUDA),
// per-token fp8 activation quantization (plain or fused into rmsnorm) and the fp8 cast.
#include "quant_matmul.h"
#include "tensor_arg.h"

namespace py = pybind11;

namespace illada {
namespace {

#ifdef ILLADA_WITH_CUDA
#define ILLADA_ON_DEVICE(call, what) call
#else
#define ILLADA_ON_DEVICE(call, what) ILLADA_CHECK(false, what << ": this build of illada_rt has no CUDA kernels")
#endif

// qweight / scale / zero -> PackedWeight, checking the format of formats.py.
PackedWeight packed_weight(const TensorArg& qweight, const TensorArg& scale, const TensorArg* zero,
                           int64_t group_size) {
  ILLADA_CHECK(qweight.dtype == DType::Int8 || qweight.dtype == DType::UInt8,
               "qweight must be int8 (int8 format) or uint8 (packed int4), got " << dtype_name(qweight.dtype));
  PackedWeight w;
  w.bits = qweight.dtype == DType::Int8 ? 8 : 4;
  expect(qweight, "qweight", 2, qweight.dtype);
  ILLADA_CHECK(qweight.size(1) <= 1 || qweight.stride(1) == 1, "qweight must be contiguous in its last dim");
  w.qweight = qweight.data();
  w.q_stride = qweight.stride(0);
  w.n = qweight.size(0);
  w.k = w.bits == 8 ? qweight.size(1) : 2 * qweight.size(1);
  if (w.bits == 8) {
    ILLADA_CHECK(zero == nullptr, "zero: the int8 format has no zero points");
    expect(scale, "scale", 1, DType::Float32);
    expect_shape(scale, "scale", {w.n});
    ILLADA_CHECK(w.n <= 1 || scale.stride(0) == 1, "scale must be contiguous");
    w.scale_stride = 1;  // one scale a row
  } else {
    ILLADA_CHECK(group_size > 0 && group_size % 2 == 0 && w.k % group_size == 0,
                 "group_size " << group_size << " must be even and divide K = " << w.k);
    w.group_size = group_size;
    expect(scale, "scale", 2, DType::Float32);
    expect_shape(scale, "scale", {w.n, w.k / group_size});
    expect_last_contiguous(scale, "scale");
    w.scale_stride = scale.stride(0);
    if (zero) {
      expect(*zero, "zero", 2, DType::Float32);
      expect_shape(*zero, "zero", scale.shape);
      ILLADA_CHECK(zero->strides == scale.strides, "zero must have the same strides as scale");
      expect_same_device(*zero, qweight, "zero", "qweight");
      w.zero = static_cast<const float*>(zero->data());
    }
  }
  expect_same_device(scale, qweight, "scale", "qweight");
  w.scale = static_cast<const float*>(scale.data());
  return w;
}

void dequantize(const TensorArg& out, const TensorArg& qweight, const TensorArg& scale, const TensorArg* zero,
                int64_t group_size, uintptr_t stream) {
  DequantParams p;
  p.w = packed_weight(qweight, scale, zero, group_size);
  ILLADA_CHECK(is_floating(out.dtype), "out must be float32, bfloat16 or float16, got " << dtype_name(out.dtype));
  expect(out, "out", 2, out.dtype);
  expect_shape(out, "out", {p.w.n, p.w.k});
  expect_last_contiguous(out, "out");
  expect_same_device(out, qweight, "out", "qweight");
  p.out = out.data();
  p.out_stride = out.stride(0);
  p.out_dtype = out.dtype;
  if (out.cuda) {
    ILLADA_ON_DEVICE(dequantize_cuda(p, reinterpret_cast<void*>(stream)), "dequantize");
  } else {
    py::gil_scoped_release nogil;
    dequantize_cpu(p);
  }
}

void quant_matmul(const TensorArg& y, const TensorArg& x, const TensorArg& qweight, const TensorArg& scale,
                  const TensorArg* zero, int64_t group_size, uintptr_t stream) {
  QuantMatmulParams p;
  p.w = packed_weight(qweight, scale, zero, group_size);
  ILLADA_CHECK(x.dtype == DType::BFloat16 || x.dtype == DType::Float16,
               "quant_matmul: x must be bfloat16 or float16, got " << dtype_name(x.dtype));
  expect(x, "x", 2, x.dtype);
  expect(y, "y", 2, x.dtype);
  ILLADA_CHECK(x.size(1) == p.w.k, "x has K = " << x.size(1) << " but the weight has K = " << p.w.k);
  expect_shape(y, "y", {x.size(0), p.w.n});
  expect_last_contiguous(x, "x");
  expect_last_contiguous(y, "y");
  expect_same_device(x, qweight, "x", "qweight");
  expect_same_device(y, qweight, "y", "qweight");
  ILLADA_CHECK(x.cuda, "quant_matmul: the compiled kernel is CUDA only (on the CPU, dequantize and use torch)");
  p.x = x.data(); p.y = y.data();
  p.m = x.size(0); p.x_stride = x.stride(0); p.y_stride = y.stride(0);
  p.dtype = x.dtype;
  ILLADA_ON_DEVICE(quant_matmul_cuda(p, reinterpret_cast<void*>(stream)), "quant_matmul");
}

void quantize_fp8(const TensorArg& xq, const TensorArg& a_scale, const TensorArg& x, const TensorArg* weight,
                  const TensorArg* residual, float eps, uintptr_t stream) {
  ILLADA_CHECK(is_floating(x.dtype), "x must be float32, bfloat16 or float16, got " << dtype_name(x.dtype));
  expect(x, "x", 2, x.dtype);
  const int64_t rows = x.size(0), dim = x.size(1);
  expect(xq, "xq", 2, DType::Float8E4M3);
  expect_shape(xq, "xq", {rows, dim});
  expect(a_scale, "a_scale", 1, DType::Float32);
  expect_shape(a_scale, "a_scale", {rows});
  ILLADA_CHECK(rows <= 1 || a_scale.stride(0) == 1, "a_scale must be contiguous");
  expect_last_contiguous(x, "x");
  expect_last_contiguous(xq, "xq");
  expect_same_device(xq, x, "xq", "x");
  expect_same_device(a_scale, x, "a_scale", "x");
  Fp8QuantParams p;
  p.xq = static_cast<uint8_t*>(xq.data()); p.a_scale = static_cast<float*>(a_scale.data()); p.x = x.data();
  p.rows = rows; p.dim = dim;
  p.xq_stride = xq.stride(0); p.x_stride = x.stride(0);
  p.eps = eps; p.dtype = x.dtype;
  if (weight) {
    expect(*weight, "weight", 1, x.dtype);
    expect_shape(*weight, "weight", {dim});
    expect_last_contiguous(*weight, "weight");
    expect_same_device(*weight, x, "weight", "x");
    p.weight = weight->data();
  }
  if (residual) {
    ILLADA_CHECK(weight != nullptr, "residual is only used with the rmsnorm weight");
    expect_rows_like(*residual, "residual", x, rows, dim);
    p.residual = residual->data();
    p.residual_stride = residual->stride(0);
  }
  if (x.cuda) {
    ILLADA_ON_DEVICE(quantize_fp8_cuda(p, reinterpret_cast<void*>(stream)), "quantize_fp8");
  } else {
    py::gil_scoped_release nogil;
    quantize_fp8_cpu(p);
  }
}

void cast_fp8(const TensorArg& out, const TensorArg& x, uintptr_t stream) {
  ILLADA_CHECK(is_floating(x.dtype), "x must be float32, bfloat16 or float16, got " << dtype_name(x.dtype));
  expect(x, "x", 1, x.dtype);
  expect(out, "out", 1, DType::Float8E4M3);
  expect_shape(out, "out", x.shape);
  ILLADA_CHECK(x.size(0) <= 1 || (x.stride(0) == 1 && out.stride(0) == 1), "cast_fp8: x and out must be contiguous");
  expect_same_device(out, x, "out", "x");
  uint8_t* o = static_cast<uint8_t*>(out.data());
  if (x.cuda) {
    ILLADA_ON_DEVICE(cast_fp8_cuda(o, x.data(), x.dtype, x.size(0), reinterpret_cast<void*>(stream)), "cast_fp8");
  } else {
    py::gil_scoped_release nogil;
    cast_fp8_cpu(o, x.data(), x.dtype, x.size(0));
  }
}

}  // namespace

void register_quant(py::module_& m) {
  m.def("dequantize", &dequantize, py::arg("out"), py::arg("qweight"), py::arg("scale"), py::arg("zero"),
        py::arg("group_size"), py::arg("stream") = 0,
        "out [N, K] = the weight an int8 ([N, K]) or packed int4 ([N, K/2] uint8) qweight stands for.");
  m.def("quant_matmul", &quant_matmul, py::arg("y"), py::arg("x"), py::arg("qweight"), py::arg("scale"),
        py::arg("zero"), py::arg("group_size"), py::arg("stream") = 0,
        "CUDA: y [M, N] = x [M, K] @ w^T for an int8 / int4 weight (bf16 / fp16 x; built for small M).");
  m.def("quantize_fp8", &quantize_fp8, py::arg("xq"), py::arg("a_scale"), py::arg("x"), py::arg("weight"),
        py::arg("residual"), py::arg("eps"), py::arg("stream") = 0,
        "Per-token fp8: xq = e4m3(h / a_scale), h = x, or rmsnorm(x) * weight (residual += x first when given).");
  m.def("cast_fp8", &cast_fp8, py::arg("out"), py::arg("x"), py::arg("stream") = 0,
        "out = x.to(float8_e4m3fn) elementwise, for contiguous 1-D x.");
  m.def("quant_matmul_k_align", [](int bits) { return quant_matmul_k_align(bits); }, py::arg("bits"),
        "The multiple of K the CUDA quant_matmul kernel needs for 8- or 4-bit weights.");
  m.attr("QUANT_KERNEL_MAX_M") = kQuantMatmulKernelMaxM;
}

}  // namespace illada
