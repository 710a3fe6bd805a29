// Block-wide pieces of RMSNorm shared by rmsnorm.cu and the fused fp8 quantization
// (quant_fp8.cu); one thread block of kNormThreads works on one row.
#pragma once
#include "elem.cuh"

namespace illada {

constexpr int kNormThreads = 256;

struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// op-reduce v over the block (warp shuffles, then warp 0 over the warp results); every
// thread gets the result. The fixed order makes equal inputs give equal sums everywhere.
template <class Op>
__device__ float block_reduce(float v, Op op) {
  __shared__ float warp_vals[kNormThreads / 32];
  __syncthreads();  // a previous reduction's readers are done with warp_vals
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_vals[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kNormThreads / 32 ? warp_vals[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) warp_vals[0] = v;
  }
  __syncthreads();
  return warp_vals[0];
}

// residual[j] += x[j] when residual is given; returns rsqrt(mean(src^2) + eps) of the row,
// src the residual after the add (or x). Each thread later reads back only the elements it wrote.
template <class T>
__device__ float rmsnorm_inv(const T* x, T* residual, int64_t dim, float eps) {
  float sum_sq = 0.0f;
  for (int64_t j = threadIdx.x; j < dim; j += kNormThreads) {
    float v = dev_to_float(x[j]);
    if (residual) {
      T summed = dev_from_float<T>(dev_to_float(residual[j]) + v);
      residual[j] = summed;
      v = dev_to_float(summed);
    }
    sum_sq += v * v;
  }
  return rsqrtf(block_reduce(sum_sq, SumOp()) / float(dim) + eps);
}

// w[j] * round(src[j] * inv) in float32 (to be rounded to T by the caller).
template <class T>
__device__ __forceinline__ float rmsnorm_value(const T* src, const T* w, int64_t j, float inv) {
  float normed = dev_to_float(dev_from_float<T>(dev_to_float(src[j]) * inv));
  return dev_to_float(w[j]) * normed;
}

}  // namespace illada
