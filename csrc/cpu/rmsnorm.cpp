// out[r] = w * round(x[r] * rsqrt(mean(x[r]^2) + eps)), optionally after residual[r] += x[r].
#include "rmsnorm.h"
#include "rmsnorm_row.h"
#include "parallel.h"

namespace illada {
namespace {

template <class T>
void rmsnorm_rows(const RmsNormParams& p) {
  const T* w = static_cast<const T*>(p.weight);
#pragma omp parallel for schedule(static) if (worth_parallel(p.rows * p.dim))
  for (int64_t r = 0; r < p.rows; ++r) {
    const T* x = static_cast<const T*>(p.x) + r * p.x_stride;
    T* out = static_cast<T*>(p.out) + r * p.out_stride;
    T* res = p.residual ? static_cast<T*>(p.residual) + r * p.residual_stride : nullptr;
    rmsnorm_row(x, res, w, p.dim, p.eps, [&](int64_t j, float v) { out[j] = from_float<T>(v); });
  }
}

}  // namespace

void rmsnorm_cpu(const RmsNormParams& p) {
  ILLADA_DISPATCH_FLOAT(p.dtype, T, [&] { rmsnorm_rows<T>(p); });
}

}  // namespace illada
