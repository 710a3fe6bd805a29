// Weight-quantized linear layers (formats in illada_rt/quant/formats.py).
//   int8: w[n, k] = q[n, k] * scale[n]                          q int8 [N, K]
//   int4: w[n, k] = (code[n, k] - zero[n, k/G]) * scale[n, k/G]  codes packed uint8 [N, K/2]:
//         k even in the low nibble, k odd in the high one; zero null means 8
//   fp8:  per-token activations xq[m, :] = e4m3(h[m, :] / a_scale[m]),
//         a_scale[m] = max(max_k |h[m, k]| / 448, 1e-12)
// Three kernel families, one params struct each:
//   DequantParams      w [N, K] in float32 / bf16 / fp16 from int8 or int4 (CPU and CUDA)
//   QuantMatmulParams  y[M, N] = x[M, K] @ w^T for bf16 / fp16 x (CUDA only; built for small M.
//                      The CPU, and by default M above 64, dequantize and call torch's matmul)
//   Fp8QuantParams     per-token fp8 quantization of x, or of rmsnorm(x) with an optional
//                      fused residual add (same rounding as rmsnorm.h) (CPU and CUDA)
#pragma once
#include <cstdint>

#include "dtype.h"

namespace illada {

// What a packed weight is and where its scales live (shared by dequantize and matmul).
struct PackedWeight {
  const void* qweight = nullptr;  // int8 [N, K] or uint8 [N, K/2], row stride q_stride (bytes = elements)
  const float* scale = nullptr;   // [N] (int8, scale_stride 1) or [N, K/G] (int4), row stride scale_stride
  const float* zero = nullptr;    // int4 only: [N, K/G] row stride scale_stride, or null (code 8 is zero)
  int64_t n = 0, k = 0;           // the logical weight [N, K]
  int64_t q_stride = 0, scale_stride = 0;
  int64_t group_size = 0;         // int4: G (even, divides K); int8: 0
  int bits = 8;                   // 8 or 4
};

struct DequantParams {
  PackedWeight w;
  void* out = nullptr;            // [N, K] of out_dtype, row stride out_stride
  int64_t out_stride = 0;
  DType out_dtype = DType::Float32;
};

// The CUDA small-M kernel's shape requirements (checked by the launcher, mirrored in illada_rt/ops/quant.py):
// K a multiple of quant_matmul_k_align(bits); int4 groups a multiple of 32; x rows and the packed
// weight rows 16-byte aligned.
constexpr int64_t quant_matmul_k_align(int bits) { return bits == 8 ? 64 : 128; }
// The most rows one launch takes (grid.y blocks of 32 tokens). Which path a call takes is the
// caller's choice (illada_rt/ops/quant.py: the kernel up to QUANT_MATMUL_MAX_M rows by default).
constexpr int64_t kQuantMatmulKernelMaxM = 65535LL * 32;

struct QuantMatmulParams {
  PackedWeight w;
  const void* x = nullptr;        // [M, K] bf16 or fp16, row stride x_stride
  void* y = nullptr;              // [M, N] like x, row stride y_stride
  int64_t m = 0, x_stride = 0, y_stride = 0;
  DType dtype = DType::BFloat16;
};

struct Fp8QuantParams {
  uint8_t* xq = nullptr;          // [rows, dim] float8_e4m3fn bits, row stride xq_stride
  float* a_scale = nullptr;       // [rows]
  const void* x = nullptr;        // [rows, dim], row stride x_stride
  const void* weight = nullptr;   // [dim] rmsnorm weight; null: quantize x itself
  void* residual = nullptr;       // [rows, dim] in/out (rmsnorm only), row stride residual_stride; may be null
  int64_t rows = 0, dim = 0;
  int64_t xq_stride = 0, x_stride = 0, residual_stride = 0;
  float eps = 1e-5f;
  DType dtype = DType::Float32;   // of x, weight and residual
};

constexpr float kFp8Max = 448.0f;
constexpr float kQuantTiny = 1e-12f;   // the scale floor of formats.py

void dequantize_cpu(const DequantParams& p);
void quantize_fp8_cpu(const Fp8QuantParams& p);
// out[i] = e4m3(x[i]) for contiguous x of float32 / bf16 / fp16 (torch's cast, bit for bit).
void cast_fp8_cpu(uint8_t* out, const void* x, DType dtype, int64_t count);

void dequantize_cuda(const DequantParams& p, void* stream);
void quant_matmul_cuda(const QuantMatmulParams& p, void* stream);
void quantize_fp8_cuda(const Fp8QuantParams& p, void* stream);
void cast_fp8_cuda(uint8_t* out, const void* x, DType dtype, int64_t count, void* stream);

}  // namespace illada
