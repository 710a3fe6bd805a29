// Embedding gather on the GPU (semantics in embedding.h): one block per token row, copying
// 16-byte vectors when the row and both pointers allow it, elements otherwise.
#include <cmath>

#include "cuda_check.h"
#include "elem.cuh"
#include "embedding.h"

namespace illada {
namespace {

constexpr int kThreads = 128;

template <class T>
__global__ void __launch_bounds__(kThreads) embedding_kernel(EmbeddingParams p, bool vectorized) {
  const int64_t i = blockIdx.x;
  const int64_t id = p.tokens[i];
  T* out = static_cast<T*>(p.out) + i * p.out_stride;
  if (id < 0 || id >= p.vocab_rows) {   // cannot raise here: poison the row (see embedding.h)
    for (int64_t j = threadIdx.x; j < p.dim; j += kThreads) out[j] = dev_from_float<T>(NAN);
    return;
  }
  const T* row = static_cast<const T*>(p.table) + id * p.table_stride;
  if (vectorized) {
    const int64_t n_vec = p.dim * int64_t(sizeof(T)) / 16;
    const uint4* src = reinterpret_cast<const uint4*>(row);
    uint4* dst = reinterpret_cast<uint4*>(out);
    for (int64_t j = threadIdx.x; j < n_vec; j += kThreads) dst[j] = src[j];
  } else {
    for (int64_t j = threadIdx.x; j < p.dim; j += kThreads) out[j] = row[j];
  }
}

bool aligned16(const void* ptr, int64_t stride_bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && stride_bytes % 16 == 0;
}

}  // namespace

void embedding_cuda(const EmbeddingParams& p, void* stream) {
  if (p.n == 0 || p.dim == 0) return;
  ILLADA_DISPATCH_DEVICE_FLOAT(p.dtype, T, [&] {
    const int64_t row_bytes = p.dim * int64_t(sizeof(T));
    const bool vectorized = row_bytes % 16 == 0 && aligned16(p.out, p.out_stride * int64_t(sizeof(T))) &&
                            aligned16(p.table, p.table_stride * int64_t(sizeof(T)));
    embedding_kernel<T><<<unsigned(p.n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p, vectorized);
  });
  ILLADA_CUDA_LAUNCH_CHECK("embedding kernel launch");
}

}  // namespace illada
