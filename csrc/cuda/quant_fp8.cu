// Per-token fp8 e4m3 activation quantization on the GPU (semantics in quant_fp8.cpp):
//   h = x, or h = w * round(normalize(src)) with src = residual += x when fused (as rmsnorm.cu)
//   a_scale[r] = max(max|h[r]| / 448, 1e-12);  xq[r] = e4m3(h[r] / a_scale[r])
// One block per row: (rmsnorm: residual add and sum of squares, block sum), then the row's
// amax (block max; a NaN sticks as in torch), then the quantized write. h is recomputed in
// each pass instead of stored: it is a few flops, and rows of any length need no scratch.
#include "cuda_check.h"
#include "elem.cuh"
#include "quant_matmul.h"
#include "rmsnorm_row.cuh"

namespace illada {
namespace {

struct NanMaxOp {  // max that keeps a NaN once one is seen
  __device__ float operator()(float a, float b) const { return (b > a || isnan(b)) ? b : a; }
};

template <class T, bool kNorm>
__device__ __forceinline__ float h_value(const T* src, const T* w, int64_t j, float inv) {
  if (!kNorm) return dev_to_float(src[j]);
  return dev_to_float(dev_from_float<T>(rmsnorm_value(src, w, j, inv)));
}

template <class T, bool kNorm>
__global__ void __launch_bounds__(kNormThreads) quantize_fp8_kernel(Fp8QuantParams p) {
  const int64_t r = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + r * p.x_stride;
  T* res = (kNorm && p.residual) ? static_cast<T*>(p.residual) + r * p.residual_stride : nullptr;
  const T* w = static_cast<const T*>(p.weight);
  const float inv = kNorm ? rmsnorm_inv(x, res, p.dim, p.eps) : 0.0f;
  const T* src = res ? res : x;  // each thread reads back only the residual elements it wrote
  float amax = 0.0f;
  for (int64_t j = threadIdx.x; j < p.dim; j += kNormThreads) amax = NanMaxOp()(amax, fabsf(h_value<T, kNorm>(src, w, j, inv)));
  amax = block_reduce(amax, NanMaxOp());
  float scale = amax / kFp8Max;
  scale = scale < kQuantTiny ? kQuantTiny : scale;  // a NaN stays NaN, as clamp_min keeps it
  if (threadIdx.x == 0) p.a_scale[r] = scale;
  uint8_t* xq = p.xq + r * p.xq_stride;
  for (int64_t j = threadIdx.x; j < p.dim; j += kNormThreads) xq[j] = float_to_fp8e4m3(h_value<T, kNorm>(src, w, j, inv) / scale);
}

template <class T>
__global__ void __launch_bounds__(kNormThreads) cast_fp8_kernel(uint8_t* out, const T* x, int64_t count) {
  for (int64_t i = int64_t(blockIdx.x) * kNormThreads + threadIdx.x; i < count; i += int64_t(gridDim.x) * kNormThreads)
    out[i] = float_to_fp8e4m3(dev_to_float(x[i]));
}

}  // namespace

void quantize_fp8_cuda(const Fp8QuantParams& p, void* stream) {
  if (p.rows == 0) return;
  ILLADA_CHECK(p.rows <= 0x7fffffff, "quantize_fp8: too many rows for one launch");
  auto s = static_cast<cudaStream_t>(stream);
  ILLADA_DISPATCH_DEVICE_FLOAT(p.dtype, T, [&] {
    if (p.weight) quantize_fp8_kernel<T, true><<<unsigned(p.rows), kNormThreads, 0, s>>>(p);
    else quantize_fp8_kernel<T, false><<<unsigned(p.rows), kNormThreads, 0, s>>>(p);
  });
  ILLADA_CUDA_LAUNCH_CHECK("quantize_fp8 kernel launch");
}

void cast_fp8_cuda(uint8_t* out, const void* x, DType dtype, int64_t count, void* stream) {
  if (count == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>((count + kNormThreads - 1) / kNormThreads, 4096));
  ILLADA_DISPATCH_DEVICE_FLOAT(dtype, T, [&] {
    cast_fp8_kernel<T><<<blocks, kNormThreads, 0, static_cast<cudaStream_t>(stream)>>>(out, static_cast<const T*>(x), count);
  });
  ILLADA_CUDA_LAUNCH_CHECK("cast_fp8 kernel launch");
}

}  // namespace illada
