// RMSNorm with optional fused residual add on the GPU (semantics in rmsnorm.h).
// One block per row: pass 1 adds the residual and accumulates sum(x^2) in float32,
// a block reduction gives rsqrt(mean + eps), pass 2 scales and writes (rmsnorm_row.cuh).
#include "cuda_check.h"
#include "elem.cuh"
#include "rmsnorm.h"
#include "rmsnorm_row.cuh"

namespace illada {
namespace {

template <class T>
__global__ void __launch_bounds__(kNormThreads) rmsnorm_kernel(RmsNormParams p) {
  const int64_t r = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + r * p.x_stride;
  T* res = p.residual ? static_cast<T*>(p.residual) + r * p.residual_stride : nullptr;
  T* out = static_cast<T*>(p.out) + r * p.out_stride;
  const T* w = static_cast<const T*>(p.weight);
  const float inv = rmsnorm_inv(x, res, p.dim, p.eps);
  const T* src = res ? res : x;
  for (int64_t j = threadIdx.x; j < p.dim; j += kNormThreads) out[j] = dev_from_float<T>(rmsnorm_value(src, w, j, inv));
}

}  // namespace

void rmsnorm_cuda(const RmsNormParams& p, void* stream) {
  if (p.rows == 0) return;
  ILLADA_DISPATCH_DEVICE_FLOAT(p.dtype, T, [&] {
    rmsnorm_kernel<T><<<unsigned(p.rows), kNormThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  });
  ILLADA_CUDA_LAUNCH_CHECK("rmsnorm kernel launch");
}

}  // namespace illada
