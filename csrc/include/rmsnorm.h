// RMSNorm with an optional fused residual add.
//   with residual:  residual[r] += x[r];  out[r] = w * round(normalize(residual[r]))
//   without:                              out[r] = w * round(normalize(x[r]))
//   normalize(v) = v * rsqrt(mean(v^2) + eps), in float32; round() to the element type.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace illada {

struct RmsNormParams {
  void* out = nullptr;            // [rows, dim], row stride out_stride
  const void* x = nullptr;        // [rows, dim], row stride x_stride
  void* residual = nullptr;       // [rows, dim] in/out, row stride residual_stride; may be null
  const void* weight = nullptr;   // [dim], contiguous
  int64_t rows = 0, dim = 0;
  int64_t out_stride = 0, x_stride = 0, residual_stride = 0;
  float eps = 1e-5f;
  DType dtype = DType::Float32;   // of out, x, residual and weight alike
};

void rmsnorm_cpu(const RmsNormParams& p);
void rmsnorm_cuda(const RmsNormParams& p, void* stream);

}  // namespace illada
