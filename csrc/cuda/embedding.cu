// out[r, :] = table[tokens[r], :] on the GPU (semantics in embedding.h). One block per row;
// 16-byte vector copies where the row size and both rows' addresses allow, else per element.
#include "cuda_check.h"
#include "embedding.h"

#include <cstdint>

namespace illada {
namespace {

constexpr int kThreads = 128;

// Element-sized words (uint32_t for float32, uint16_t for 16-bit types), or uint4 vectors.
template <class W>
__global__ void __launch_bounds__(kThreads) embedding_kernel(EmbeddingParams p, int64_t words_per_row,
                                                            int64_t out_stride_w, int64_t table_stride_w, W nan_word) {
  const int64_t r = blockIdx.x;
  const int64_t t = p.tokens[r * p.tokens_stride];
  W* out = static_cast<W*>(p.out) + r * out_stride_w;
  if (t < 0 || t >= p.vocab) {
    for (int64_t j = threadIdx.x; j < words_per_row; j += kThreads) out[j] = nan_word;
    return;
  }
  const W* src = static_cast<const W*>(p.table) + t * table_stride_w;
  for (int64_t j = threadIdx.x; j < words_per_row; j += kThreads) out[j] = src[j];
}

template <class W>
void launch(const EmbeddingParams& p, int64_t elems_per_word, W nan_word, cudaStream_t stream) {
  embedding_kernel<W><<<unsigned(p.rows), kThreads, 0, stream>>>(
      p, p.dim / elems_per_word, p.out_stride / elems_per_word, p.table_stride / elems_per_word, nan_word);
}

}  // namespace

void embedding_cuda(const EmbeddingParams& p, void* stream) {
  if (p.rows == 0 || p.dim == 0) return;
  ILLADA_CHECK(is_floating(p.dtype), "embedding: table must be float32, bfloat16 or float16");
  ILLADA_CHECK(p.rows < (int64_t(1) << 31), "embedding: too many rows for one launch");
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t elem = p.dtype == DType::Float32 ? 4 : 2;
  const int64_t per_vec = 16 / elem;
  const bool vec = p.dim % per_vec == 0 && p.out_stride % per_vec == 0 && p.table_stride % per_vec == 0 &&
                   reinterpret_cast<uintptr_t>(p.out) % 16 == 0 && reinterpret_cast<uintptr_t>(p.table) % 16 == 0;
  // quiet NaN bit patterns of the element type
  const uint32_t nan32 = 0x7fc00000u;
  const uint16_t nan16 = p.dtype == DType::BFloat16 ? uint16_t(0x7fc0) : uint16_t(0x7e00);
  if (vec) {
    const uint32_t w = elem == 4 ? nan32 : (uint32_t(nan16) << 16 | nan16);
    launch<uint4>(p, per_vec, make_uint4(w, w, w, w), s);
  } else if (elem == 4) {
    launch<uint32_t>(p, 1, nan32, s);
  } else {
    launch<uint16_t>(p, 1, nan16, s);
  }
  ILLADA_CUDA_LAUNCH_CHECK("embedding kernel launch");
}

}  // namespace illada
