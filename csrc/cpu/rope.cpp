// In-place rotate-half RoPE from a precomputed cos/sin table (see rope.h).
#include "rope.h"
#include "parallel.h"

namespace illada {
namespace {

template <class T>
void rope_rows(const RopeParams& p) {
  const int64_t half = p.head_dim / 2;
#pragma omp parallel for collapse(2) schedule(static) if (worth_parallel(p.batch * p.seq * p.heads * p.head_dim))
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t l = 0; l < p.seq; ++l) {
      const float* c = p.cos + (p.position_start + l) * half;
      const float* s = p.sin + (p.position_start + l) * half;
      for (int64_t h = 0; h < p.heads; ++h) {
        T* x = static_cast<T*>(p.x) + b * p.stride_b + l * p.stride_l + h * p.stride_h;
        for (int64_t j = 0; j < half; ++j) {
          float x1 = to_float(x[j]), x2 = to_float(x[j + half]);
          float a = x1 * c[j];
          float bb = -x2 * s[j];
          float lo = a + bb;
          float hi = x2 * c[j] + x1 * s[j];
          x[j] = from_float<T>(lo);
          x[j + half] = from_float<T>(hi);
        }
      }
    }
  }
}

}  // namespace

void rope_cpu(const RopeParams& p) {
  ILLADA_DISPATCH_FLOAT(p.dtype, T, [&] { rope_rows<T>(p); });
}

}  // namespace illada
