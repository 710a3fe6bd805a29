// Bidirectional (non-causal) multi-head attention with grouped KV heads:
//   out[b, i, h] = sum_j softmax_j(scale * <q[b, i, h], k[b, j, h / group]>) v[b, j, h / group]
// over the keys j with key_mask[b, j] != 0 (all keys when key_mask is null),
// group = heads / kv_heads. Accumulation in float32; out rounded to the element type.
// A query row whose keys are all masked gets zeros.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace illada {

struct AttentionParams {
  const void* q = nullptr;   // [batch, seq_q, heads, head_dim]
  const void* k = nullptr;   // [batch, seq_k, kv_heads, head_dim]
  const void* v = nullptr;   // [batch, seq_k, kv_heads, head_dim]
  void* out = nullptr;       // [batch, seq_q, heads, head_dim]
  const uint8_t* key_mask = nullptr;  // [batch, seq_k], row stride mask_stride; may be null
  int64_t batch = 0, seq_q = 0, seq_k = 0, heads = 0, kv_heads = 0, head_dim = 0;
  // Element strides of the batch, sequence and head dims; head_dim is contiguous.
  int64_t q_sb = 0, q_sl = 0, q_sh = 0;
  int64_t k_sb = 0, k_sl = 0, k_sh = 0;
  int64_t v_sb = 0, v_sl = 0, v_sh = 0;
  int64_t o_sb = 0, o_sl = 0, o_sh = 0;
  int64_t mask_stride = 0;
  float scale = 1.0f;
  DType dtype = DType::Float32;
};

void attention_cpu(const AttentionParams& p);

// CUDA (device pointers, on `stream`): bfloat16/float16 on tensor cores for head_dim 64 and 128
// (other head dims raise), rows of q/k/v/out 16-byte aligned (data pointers 16-byte aligned,
// batch/seq/head strides multiples of 8 elements, else raises); float32 with a plain CUDA-core
// kernel for head_dim <= 256. The 16-bit path rounds the softmax weights to the element type
// before the P.V product (as flash attention does); scores, softmax and sums stay float32.
void attention_cuda(const AttentionParams& p, void* stream);

}  // namespace illada
