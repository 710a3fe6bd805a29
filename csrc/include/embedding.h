// Embedding gather: out[i, :] = table[tokens[i], :] for every token i.
// An id outside [0, vocab_rows) is an error: the CPU raises (naming the id and position);
// the CUDA kernel cannot raise, so it fills that row with NaN, which the remask kernel's
// non-finite check then reports (callers validate ids first; this is the safety net).
#pragma once
#include <cstdint>

#include "dtype.h"

namespace illada {

struct EmbeddingParams {
  void* out = nullptr;              // [n, dim], row stride out_stride
  const int64_t* tokens = nullptr;  // [n], contiguous
  const void* table = nullptr;      // [vocab_rows, dim], row stride table_stride
  int64_t n = 0, dim = 0, vocab_rows = 0;
  int64_t out_stride = 0, table_stride = 0;
  DType dtype = DType::Float32;     // of out and table alike
};

void embedding_cpu(const EmbeddingParams& p);
void embedding_cuda(const EmbeddingParams& p, void* stream);

}  // namespace illada
