// out[r] = w * round(x[r] * rsqrt(mean(x[r]^2) + eps)), optionally after residual[r] += x[r].
#include "rmsnorm.h"
#include "parallel.h"

#include <cmath>

namespace illada {
namespace {

template <class T>
void rmsnorm_rows(const RmsNormParams& p) {
  const T* w = static_cast<const T*>(p.weight);
#pragma omp parallel for schedule(static) if (worth_parallel(p.rows * p.dim))
  for (int64_t r = 0; r < p.rows; ++r) {
    const T* x = static_cast<const T*>(p.x) + r * p.x_stride;
    T* out = static_cast<T*>(p.out) + r * p.out_stride;
    const T* src = x;
    if (p.residual) {
      T* res = static_cast<T*>(p.residual) + r * p.residual_stride;
      for (int64_t j = 0; j < p.dim; ++j) res[j] = from_float<T>(to_float(res[j]) + to_float(x[j]));
      src = res;
    }
    double sum_sq = 0.0;
    for (int64_t j = 0; j < p.dim; ++j) {
      float v = to_float(src[j]);
      sum_sq += double(v) * v;
    }
    float inv = 1.0f / std::sqrt(float(sum_sq / double(p.dim)) + p.eps);
    for (int64_t j = 0; j < p.dim; ++j) {
      float normed = round_to<T>(to_float(src[j]) * inv);
      out[j] = from_float<T>(to_float(w[j]) * normed);
    }
  }
}

}  // namespace

void rmsnorm_cpu(const RmsNormParams& p) {
  ILLADA_DISPATCH_FLOAT(p.dtype, T, [&] { rmsnorm_rows<T>(p); });
}

}  // namespace illada
