// out = round(round(silu(gate)) * up), silu(g) = g / (1 + exp(-g)).
#include "swiglu.h"
#include "parallel.h"

#include <cmath>

namespace illada {
namespace {

template <class T>
void swiglu_rows(const SwigluParams& p) {
#pragma omp parallel for schedule(static) if (worth_parallel(p.rows * p.cols))
  for (int64_t r = 0; r < p.rows; ++r) {
    const T* g = static_cast<const T*>(p.gate) + r * p.gate_stride;
    const T* u = static_cast<const T*>(p.up) + r * p.up_stride;
    T* o = static_cast<T*>(p.out) + r * p.out_stride;
    for (int64_t j = 0; j < p.cols; ++j) {
      float gv = to_float(g[j]);
      float act = round_to<T>(gv / (1.0f + std::exp(-gv)));
      o[j] = from_float<T>(act * to_float(u[j]));
    }
  }
}

}  // namespace

void swiglu_cpu(const SwigluParams& p) {
  ILLADA_DISPATCH_FLOAT(p.dtype, T, [&] { swiglu_rows<T>(p); });
}

}  // namespace illada
