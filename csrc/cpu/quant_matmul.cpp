// Dequantize packed int8 / int4 weights: w[n, k] -> out [N, K] (formats in quant_matmul.h),
// computed in float32 and rounded once to the output type, as formats.dequantize does.
#include "parallel.h"
#include "quant_matmul.h"

namespace illada {
namespace {

template <class T>
void dequantize_rows(const DequantParams& p) {
  const PackedWeight& w = p.w;
#pragma omp parallel for schedule(static) if (worth_parallel(w.n * w.k))
  for (int64_t n = 0; n < w.n; ++n) {
    T* out = static_cast<T*>(p.out) + n * p.out_stride;
    const float* scale = w.scale + n * w.scale_stride;
    if (w.bits == 8) {
      const int8_t* q = static_cast<const int8_t*>(w.qweight) + n * w.q_stride;
      const float s = scale[0];
      for (int64_t k = 0; k < w.k; ++k) out[k] = from_float<T>(float(q[k]) * s);
      continue;
    }
    const uint8_t* q = static_cast<const uint8_t*>(w.qweight) + n * w.q_stride;
    const float* zero = w.zero ? w.zero + n * w.scale_stride : nullptr;
    for (int64_t g = 0; g * w.group_size < w.k; ++g) {
      const float s = scale[g], z = zero ? zero[g] : 8.0f;
      const int64_t k0 = g * w.group_size;
      for (int64_t k = k0; k < k0 + w.group_size; k += 2) {
        const uint8_t byte = q[k / 2];
        out[k] = from_float<T>((float(byte & 15) - z) * s);
        out[k + 1] = from_float<T>((float(byte >> 4) - z) * s);
      }
    }
  }
}

}  // namespace

void dequantize_cpu(const DequantParams& p) {
  ILLADA_DISPATCH_FLOAT(p.out_dtype, T, [&] { dequantize_rows<T>(p); });
}

}  // namespace illada
