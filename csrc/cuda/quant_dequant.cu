// Dequantize packed int8 / int4 weights on the GPU: out [N, K] = w (formats in quant_matmul.h),
// computed in float32 and rounded once to the output type, as formats.dequantize does.
// One thread per packed byte pair: int8 threads write 2 outputs, int4 threads 4 (two bytes);
// rows on blockIdx.x, column chunks on blockIdx.y, so no division per element.
#include "cuda_check.h"
#include "elem.cuh"
#include "quant_matmul.h"

namespace illada {
namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void __launch_bounds__(kThreads) dequant_int8_kernel(DequantParams p) {
  const int64_t n = blockIdx.x;
  const int8_t* q = static_cast<const int8_t*>(p.w.qweight) + n * p.w.q_stride;
  T* out = static_cast<T*>(p.out) + n * p.out_stride;
  const float s = p.w.scale[n];
  for (int64_t k = (int64_t(blockIdx.y) * kThreads + threadIdx.x); k < p.w.k; k += int64_t(gridDim.y) * kThreads)
    out[k] = dev_from_float<T>(float(q[k]) * s);
}

template <class T>
__global__ void __launch_bounds__(kThreads) dequant_int4_kernel(DequantParams p) {
  const int64_t n = blockIdx.x;
  const uint8_t* q = static_cast<const uint8_t*>(p.w.qweight) + n * p.w.q_stride;
  T* out = static_cast<T*>(p.out) + n * p.out_stride;
  const float* scale = p.w.scale + n * p.w.scale_stride;
  const float* zero = p.w.zero ? p.w.zero + n * p.w.scale_stride : nullptr;
  const int64_t bytes = p.w.k / 2;
  for (int64_t b = (int64_t(blockIdx.y) * kThreads + threadIdx.x); b < bytes; b += int64_t(gridDim.y) * kThreads) {
    const int64_t g = (2 * b) / p.w.group_size;  // both nibbles share a group: G is even
    const float s = scale[g], z = zero ? zero[g] : 8.0f;
    const uint8_t byte = q[b];
    out[2 * b] = dev_from_float<T>((float(byte & 15) - z) * s);
    out[2 * b + 1] = dev_from_float<T>((float(byte >> 4) - z) * s);
  }
}

}  // namespace

void dequantize_cuda(const DequantParams& p, void* stream) {
  if (p.w.n == 0 || p.w.k == 0) return;
  const int64_t per_row = p.w.bits == 8 ? p.w.k : p.w.k / 2;
  const dim3 grid(unsigned(p.w.n), unsigned(std::min<int64_t>((per_row + kThreads - 1) / kThreads, 64)));
  auto s = static_cast<cudaStream_t>(stream);
  ILLADA_DISPATCH_DEVICE_FLOAT(p.out_dtype, T, [&] {
    if (p.w.bits == 8) dequant_int8_kernel<T><<<grid, kThreads, 0, s>>>(p);
    else dequant_int4_kernel<T><<<grid, kThreads, 0, s>>>(p);
  });
  ILLADA_CUDA_LAUNCH_CHECK("dequantize kernel launch");
}

}  // namespace illada
