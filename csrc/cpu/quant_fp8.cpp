// Per-token fp8 e4m3 activation quantization, alone or fused into RMSNorm:
//   h[r] = x[r]                       (plain)
//   h[r] = w * round(normalize(src))  (rmsnorm; src = residual[r] += x[r] when fused, else x[r])
//   a_scale[r] = max(max|h[r]| / 448, 1e-12);  xq[r] = e4m3(h[r] / a_scale[r])
// h is rounded to the element type exactly as rmsnorm_cpu rounds its output, so the result
// equals formats.quantize_activation_fp8(ops.rmsnorm(...)) bit for bit.
#include <algorithm>
#include <cmath>
#include <vector>

#include "parallel.h"
#include "quant_matmul.h"
#include "rmsnorm_row.h"

namespace illada {
namespace {

template <class T>
void quantize_row(const Fp8QuantParams& p, int64_t r, float* h) {
  const T* x = static_cast<const T*>(p.x) + r * p.x_stride;
  if (p.weight) {
    T* res = p.residual ? static_cast<T*>(p.residual) + r * p.residual_stride : nullptr;
    rmsnorm_row(x, res, static_cast<const T*>(p.weight), p.dim, p.eps,
                [&](int64_t j, float v) { h[j] = round_to<T>(v); });
  } else {
    for (int64_t j = 0; j < p.dim; ++j) h[j] = to_float(x[j]);
  }
  float amax = 0.0f;
  for (int64_t j = 0; j < p.dim; ++j) {  // a NaN sticks, as in torch's amax
    const float a = std::fabs(h[j]);
    if (a > amax || std::isnan(a)) amax = a;
  }
  const float scale = std::max(amax / kFp8Max, kQuantTiny);  // NaN stays NaN, as clamp_min keeps it
  p.a_scale[r] = scale;
  uint8_t* xq = p.xq + r * p.xq_stride;
  for (int64_t j = 0; j < p.dim; ++j) xq[j] = float_to_fp8e4m3(h[j] / scale);
}

template <class T>
void quantize_rows(const Fp8QuantParams& p) {
#pragma omp parallel if (worth_parallel(p.rows * p.dim))
  {
    std::vector<float> h(size_t(p.dim));  // the row before quantization
#pragma omp for schedule(static)
    for (int64_t r = 0; r < p.rows; ++r) quantize_row<T>(p, r, h.data());
  }
}

template <class T>
void cast_all(uint8_t* out, const T* x, int64_t count) {
#pragma omp parallel for schedule(static) if (worth_parallel(count))
  for (int64_t i = 0; i < count; ++i) out[i] = float_to_fp8e4m3(to_float(x[i]));
}

}  // namespace

void quantize_fp8_cpu(const Fp8QuantParams& p) {
  ILLADA_DISPATCH_FLOAT(p.dtype, T, [&] { quantize_rows<T>(p); });
}

void cast_fp8_cpu(uint8_t* out, const void* x, DType dtype, int64_t count) {
  ILLADA_DISPATCH_FLOAT(dtype, T, [&] { cast_all<T>(out, static_cast<const T*>(x), count); });
}

}  // namespace illada
