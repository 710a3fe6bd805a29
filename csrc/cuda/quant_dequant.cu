// Dequantize packed int8 / int4 weights on the GPU: out [N, K] = w (formats in quant_matmul.h),
// computed in float32 and rounded once to the output type, as formats.dequantize does.
// This feeds cuBLAS on the large-M path, so it runs at memory speed: where K, the group size and
// the row alignments allow, a thread turns 8 consecutive k (one 8-byte int8 or 4-byte int4 load)
// into one 16-byte store of bf16/fp16 (two for float32); otherwise one element (int8) or one
// byte (int4) a thread. Rows on blockIdx.x, column chunks on blockIdx.y.
#include <cstdint>

#include "cuda_check.h"
#include "elem.cuh"
#include "quant_matmul.h"

namespace illada {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 8;  // k per thread in the vectorized kernel

__device__ __forceinline__ float int4_value(uint32_t code, float s, float z) { return (float(code) - z) * s; }

template <class T>
__global__ void __launch_bounds__(kThreads) dequant_int8_kernel(DequantParams p) {
  const int64_t n = blockIdx.x;
  const int8_t* q = static_cast<const int8_t*>(p.w.qweight) + n * p.w.q_stride;
  T* out = static_cast<T*>(p.out) + n * p.out_stride;
  const float s = p.w.scale[n];
  for (int64_t k = int64_t(blockIdx.y) * kThreads + threadIdx.x; k < p.w.k; k += int64_t(gridDim.y) * kThreads)
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
  for (int64_t b = int64_t(blockIdx.y) * kThreads + threadIdx.x; b < bytes; b += int64_t(gridDim.y) * kThreads) {
    const int64_t g = (2 * b) / p.w.group_size;  // both nibbles share a group: G is even
    const float s = scale[g], z = zero ? zero[g] : 8.0f;
    const uint32_t byte = q[b];
    out[2 * b] = dev_from_float<T>(int4_value(byte & 15u, s, z));
    out[2 * b + 1] = dev_from_float<T>(int4_value(byte >> 4, s, z));
  }
}

template <class T>
struct alignas(16) Vec8 {
  T v[kVec];
};

// 8 consecutive k a thread: k0 = 8c. int4 needs G % 8 == 0 so that the 8 share one group.
template <class T, int BITS>
__global__ void __launch_bounds__(kThreads) dequant_vec_kernel(DequantParams p) {
  const int64_t n = blockIdx.x;
  const uint8_t* q = static_cast<const uint8_t*>(p.w.qweight) + n * p.w.q_stride;
  T* out = static_cast<T*>(p.out) + n * p.out_stride;
  const int64_t chunks = p.w.k / kVec;
  for (int64_t c = int64_t(blockIdx.y) * kThreads + threadIdx.x; c < chunks; c += int64_t(gridDim.y) * kThreads) {
    Vec8<T> o;
    if (BITS == 8) {
      const uint2 raw = *reinterpret_cast<const uint2*>(q + kVec * c);
      const float s = p.w.scale[n];
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const uint32_t word = i < 4 ? raw.x : raw.y;
        o.v[i] = dev_from_float<T>(float(int8_t((word >> (8 * (i % 4))) & 0xffu)) * s);
      }
    } else {
      const uint32_t raw = *reinterpret_cast<const uint32_t*>(q + (kVec / 2) * c);  // 8 nibbles, low first
      const int64_t gi = n * p.w.scale_stride + (kVec * c) / p.w.group_size;
      const float s = p.w.scale[gi], z = p.w.zero ? p.w.zero[gi] : 8.0f;
#pragma unroll
      for (int i = 0; i < kVec; ++i) o.v[i] = dev_from_float<T>(int4_value((raw >> (4 * i)) & 15u, s, z));
    }
    *reinterpret_cast<Vec8<T>*>(out + kVec * c) = o;
  }
}

bool aligned(const void* ptr, int64_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % uintptr_t(bytes) == 0; }

}  // namespace

void dequantize_cuda(const DequantParams& p, void* stream) {
  if (p.w.n == 0 || p.w.k == 0) return;
  const int64_t out_bytes = p.out_dtype == DType::Float32 ? 4 : 2;
  const int64_t load_bytes = p.w.bits == 8 ? 8 : 4;  // what one vectorized thread loads
  const bool vec = p.w.k % kVec == 0 && (p.w.bits == 8 || p.w.group_size % kVec == 0) &&
                   aligned(p.w.qweight, load_bytes) && p.w.q_stride % load_bytes == 0 &&
                   aligned(p.out, 16) && (p.out_stride * out_bytes) % 16 == 0;
  const int64_t per_row = vec ? p.w.k / kVec : p.w.bits == 8 ? p.w.k : p.w.k / 2;
  const dim3 grid(unsigned(p.w.n), unsigned(std::min<int64_t>((per_row + kThreads - 1) / kThreads, 64)));
  auto s = static_cast<cudaStream_t>(stream);
  ILLADA_DISPATCH_DEVICE_FLOAT(p.out_dtype, T, [&] {
    if (vec && p.w.bits == 8) dequant_vec_kernel<T, 8><<<grid, kThreads, 0, s>>>(p);
    else if (vec) dequant_vec_kernel<T, 4><<<grid, kThreads, 0, s>>>(p);
    else if (p.w.bits == 8) dequant_int8_kernel<T><<<grid, kThreads, 0, s>>>(p);
    else dequant_int4_kernel<T><<<grid, kThreads, 0, s>>>(p);
  });
  ILLADA_CUDA_LAUNCH_CHECK("dequantize kernel launch");
}

}  // namespace illada
