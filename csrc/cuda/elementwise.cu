// Elementwise families on the GPU (semantics in rope.h and swiglu.h), bit-compatible with the
// CPU twins: float32 arithmetic with explicit round-to-nearest intrinsics, so nvcc cannot
// contract a multiply and an add into one FMA (the CPU builds with -ffp-contract=off).
//
//   rope:   x[j], x[j+h] <- x[j] cos - x[j+h] sin, x[j+h] cos + x[j] sin   (in place)
//   swiglu: out = round(round(g / (1 + exp(-g))) * up)
#include <algorithm>

#include "cuda_check.h"
#include "elem.cuh"
#include "rope.h"
#include "swiglu.h"

namespace illada {
namespace {

constexpr int kThreads = 256;
constexpr int kSwigluPerThread = 8;  // columns per thread: a CTA covers 2048 columns of one row

// One thread per rotated pair (b, l, h, j < head_dim/2); a grid-stride loop over all pairs.
template <class T>
__global__ void __launch_bounds__(kThreads) rope_kernel(RopeParams p, int64_t pairs) {
  const int64_t half = p.head_dim / 2;
  for (int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x; idx < pairs;
       idx += int64_t(gridDim.x) * kThreads) {
    const int64_t j = idx % half;
    int64_t r = idx / half;  // (b, l, h) flattened
    const int64_t h = r % p.heads;
    r /= p.heads;
    const int64_t l = r % p.seq, b = r / p.seq;
    T* x = static_cast<T*>(p.x) + b * p.stride_b + l * p.stride_l + h * p.stride_h;
    const int64_t t = (p.position_start + l) * half + j;
    const float c = p.cos[t], s = p.sin[t];
    const float x1 = dev_to_float(x[j]), x2 = dev_to_float(x[j + half]);
    const float lo = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(-x2, s));
    const float hi = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
    x[j] = dev_from_float<T>(lo);
    x[j + half] = dev_from_float<T>(hi);
  }
}

// grid (rows, column chunks of kThreads * kSwigluPerThread); coalesced loads per row.
template <class T>
__global__ void __launch_bounds__(kThreads) swiglu_kernel(SwigluParams p) {
  const int64_t r = blockIdx.x;
  const T* gate = static_cast<const T*>(p.gate) + r * p.gate_stride;
  const T* up = static_cast<const T*>(p.up) + r * p.up_stride;
  T* out = static_cast<T*>(p.out) + r * p.out_stride;
  const int64_t base = int64_t(blockIdx.y) * (kThreads * kSwigluPerThread) + threadIdx.x;
#pragma unroll
  for (int e = 0; e < kSwigluPerThread; ++e) {
    const int64_t j = base + int64_t(e) * kThreads;
    if (j < p.cols) {
      const float g = dev_to_float(gate[j]);
      const float silu = __fdiv_rn(g, __fadd_rn(1.0f, expf(-g)));
      const float act = dev_to_float(dev_from_float<T>(silu));  // torch rounds F.silu's output
      out[j] = dev_from_float<T>(__fmul_rn(act, dev_to_float(up[j])));
    }
  }
}

}  // namespace

void rope_cuda(const RopeParams& p, void* stream) {
  ILLADA_CHECK(p.head_dim % 2 == 0, "rope (CUDA): head_dim must be even, got " << p.head_dim);
  const int64_t pairs = p.batch * p.seq * p.heads * (p.head_dim / 2);
  if (pairs == 0) return;
  const int64_t blocks = std::min<int64_t>((pairs + kThreads - 1) / kThreads, int64_t(1) << 30);
  ILLADA_DISPATCH_DEVICE_FLOAT(p.dtype, T, [&] {
    rope_kernel<T><<<unsigned(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p, pairs);
  });
  ILLADA_CUDA_LAUNCH_CHECK("rope kernel launch");
}

void swiglu_cuda(const SwigluParams& p, void* stream) {
  if (p.rows == 0 || p.cols == 0) return;
  const int64_t chunks = (p.cols + kThreads * kSwigluPerThread - 1) / (kThreads * kSwigluPerThread);
  ILLADA_CHECK(p.rows <= 0x7fffffff && chunks <= 65535,
               "swiglu (CUDA): " << p.rows << " rows x " << p.cols << " columns exceed the launch grid");
  const dim3 grid(unsigned(p.rows), unsigned(chunks));
  ILLADA_DISPATCH_DEVICE_FLOAT(p.dtype, T, [&] {
    swiglu_kernel<T><<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  });
  ILLADA_CUDA_LAUNCH_CHECK("swiglu kernel launch");
}

}  // namespace illada
