// Embedding gather: out[r, :] = table[tokens[r], :] for r < rows (a row copy, any element type).
// CPU: a token outside [0, vocab) raises before anything is written.
// CUDA: nothing is read back to check tokens (no host synchronisation, graph-capturable); a
// row whose token is outside [0, vocab) is written as NaN instead, so the non-finite check
// downstream (the remask error word) reports it.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace illada {

struct EmbeddingParams {
  void* out = nullptr;              // [rows, dim], row stride out_stride
  const int64_t* tokens = nullptr;  // [rows] with stride tokens_stride
  const void* table = nullptr;      // [vocab, dim], row stride table_stride
  int64_t rows = 0, dim = 0, vocab = 0;
  int64_t out_stride = 0, tokens_stride = 1, table_stride = 0;
  DType dtype = DType::Float32;     // of out and table alike
};

void embedding_cpu(const EmbeddingParams& p);
void embedding_cuda(const EmbeddingParams& p, void* stream);

}  // namespace illada
