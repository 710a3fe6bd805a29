// Rotary position embedding, rotate-half convention, in place:
//   for j < h = head_dim/2, angle a = table[pos][j]:
//     x[j]     <- x[j] * cos(a) - x[j+h] * sin(a)
//     x[j+h]   <- x[j+h] * cos(a) + x[j] * sin(a)
// computed in float32 and rounded to the element type; pos = position_start + l.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace illada {

struct RopeParams {
  void* x = nullptr;               // [batch, seq, heads, head_dim], head_dim contiguous
  int64_t batch = 0, seq = 0, heads = 0, head_dim = 0;
  int64_t stride_b = 0, stride_l = 0, stride_h = 0;
  const float* cos = nullptr;      // [table_len, head_dim/2] contiguous
  const float* sin = nullptr;      // [table_len, head_dim/2] contiguous
  int64_t table_len = 0;
  int64_t position_start = 0;
  DType dtype = DType::Float32;
};

void rope_cpu(const RopeParams& p);
// CUDA: x, cos and sin are device pointers; the same float32 arithmetic, no FMA contraction.
void rope_cuda(const RopeParams& p, void* stream);

}  // namespace illada
