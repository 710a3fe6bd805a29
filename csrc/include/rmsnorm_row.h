// One row of RMSNorm on the host, shared by rmsnorm_cpu and the fused fp8 quantization:
//   src = x, or (residual given) residual += x first and src = residual;
//   emit(j, w[j] * round(src[j] * inv)) for every j, inv = rsqrt(mean(src^2) + eps),
// the product in float32, still to be rounded to the element type by the caller.
#pragma once
#include <cmath>
#include <cstdint>

#include "dtype.h"

namespace illada {

template <class T, class Emit>
inline void rmsnorm_row(const T* x, T* residual, const T* w, int64_t dim, float eps, Emit emit) {
  const T* src = x;
  if (residual) {
    for (int64_t j = 0; j < dim; ++j) residual[j] = from_float<T>(to_float(residual[j]) + to_float(x[j]));
    src = residual;
  }
  double sum_sq = 0.0;
  for (int64_t j = 0; j < dim; ++j) {
    float v = to_float(src[j]);
    sum_sq += double(v) * v;
  }
  const float inv = 1.0f / std::sqrt(float(sum_sq / double(dim)) + eps);
  for (int64_t j = 0; j < dim; ++j) emit(j, to_float(w[j]) * round_to<T>(to_float(src[j]) * inv));
}

}  // namespace illada
