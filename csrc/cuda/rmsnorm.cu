// RMSNorm with optional fused residual add on the GPU (semantics in rmsnorm.h).
// One block per row: pass 1 adds the residual and accumulates sum(x^2) in float32,
// a block reduction gives rsqrt(mean + eps), pass 2 scales and writes.
#include "cuda_check.h"
#include "elem.cuh"
#include "rmsnorm.h"

namespace illada {
namespace {

constexpr int kThreads = 256;

__device__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = lane < kThreads / 32 ? warp_sums[lane] : 0.0f;
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) warp_sums[0] = v;
  }
  __syncthreads();
  return warp_sums[0];
}

template <class T>
__global__ void __launch_bounds__(kThreads) rmsnorm_kernel(RmsNormParams p) {
  const int64_t r = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + r * p.x_stride;
  T* res = p.residual ? static_cast<T*>(p.residual) + r * p.residual_stride : nullptr;
  T* out = static_cast<T*>(p.out) + r * p.out_stride;
  const T* w = static_cast<const T*>(p.weight);

  float sum_sq = 0.0f;
  for (int64_t j = threadIdx.x; j < p.dim; j += kThreads) {
    float v = dev_to_float(x[j]);
    if (res) {
      T summed = dev_from_float<T>(dev_to_float(res[j]) + v);
      res[j] = summed;
      v = dev_to_float(summed);
    }
    sum_sq += v * v;
  }
  const float inv = rsqrtf(block_sum(sum_sq) / float(p.dim) + p.eps);
  const T* src = res ? res : x;
  for (int64_t j = threadIdx.x; j < p.dim; j += kThreads) {
    float normed = dev_to_float(dev_from_float<T>(dev_to_float(src[j]) * inv));
    out[j] = dev_from_float<T>(dev_to_float(w[j]) * normed);
  }
}

}  // namespace

void rmsnorm_cuda(const RmsNormParams& p, void* stream) {
  if (p.rows == 0) return;
  ILLADA_DISPATCH_DEVICE_FLOAT(p.dtype, T, [&] {
    rmsnorm_kernel<T><<<unsigned(p.rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  });
  ILLADA_CUDA_LAUNCH_CHECK("rmsnorm kernel launch");
}

}  // namespace illada
