// Remask: one denoising step's token choice and transfer, for the current block.
//
// Phase 1, for every still-masked row i of the block (tokens[b, block_start + i] == mask_id):
//   l      = cfg ? un + (cfg_scale + 1) * (cond - un) : cond       (float32, vocab entries only)
//   x0     = argmax_{v != mask_id} score_v, score_v = l_v - T * log(-log u_v)  (float64; T = 0: score = l)
//   conf   = low_confidence: softmax(l)[x0] (float64);  random: u (own stream)
// with u from Philox keyed by seeds[b] at position (block_start + i - row_offset[b]) and step[b].
// Phase 2, per sequence b over its masked rows:
//   select the top k[b] by conf (ties: lower position first), or, when k is null, every
//   row with conf >= threshold plus the most confident one; write x0 into tokens there.
//   masks_left[b] = masks remaining in the block afterwards.
//
// CUDA (remask_cuda): every pointer is a device pointer (k, step, seeds and row_offset
// included) and nothing synchronises with the host or allocates. Differences from the CPU:
//   - the softmax sum adds float32 exp(l - max) terms in float64 (the CPU exponentiates in
//     float64), so conf agrees to ~1e-7 relative; the Gumbel scores are float64 with the
//     CPU's formula and rounding (no FMA), so x0 agrees except at ties within an ulp or two;
//   - non-finite logits (NaN or +inf in a masked row, or no finite choice) cannot raise:
//     the kernel sets the sticky error word at the start of the workspace to non-zero, and
//     while it is set no token is transferred (x0/conf/masks_left are still written).
//     Nothing clears it but the caller; ops.remask_ does not synchronise to check it.
//   - block_len <= kRemaskMaxBlockCuda (the per-sequence sort lives in shared memory).
// Workspace layout (remask_workspace_bytes): [0, 16) error word (uint32) and padding,
// then int64 token[batch * block_len], then float64 conf[batch * block_len].
#pragma once
#include <cstddef>
#include <cstdint>

#include "dtype.h"

namespace illada {

enum class RemaskMode : int { LowConfidence = 0, Random = 1 };

struct RemaskParams {
  const void* logits = nullptr;     // [batch, block_len, >= vocab]: strides logits_sb, logits_sl
  const void* uncond = nullptr;     // CFG unconditional logits, same layout and dtype; may be null
  int64_t logits_sb = 0, logits_sl = 0;
  DType logits_dtype = DType::Float32;
  int64_t vocab = 0;                // entries considered per row (padded rows beyond are ignored)
  double cfg_scale = 0.0;           // weight (cfg_scale + 1) is rounded to float32 once, as torch does

  int64_t* tokens = nullptr;        // [batch, tokens_len] in/out, row stride tokens_sb
  int64_t tokens_sb = 0, tokens_len = 0;
  int64_t batch = 0, block_start = 0, block_len = 0;
  int64_t mask_id = 0;

  double temperature = 0.0;
  const int64_t* seeds = nullptr;       // [batch]
  const int64_t* row_offset = nullptr;  // [batch] left padding of each sequence
  const int64_t* step = nullptr;        // [batch] denoising step index (RNG counter)
  RemaskMode mode = RemaskMode::LowConfidence;

  const int64_t* k = nullptr;       // [batch] tokens to transfer (negative counts as 0); null: threshold rule
  double threshold = 1.0;

  int64_t* x0 = nullptr;            // optional out [batch, block_len]: chosen token (-1 if not masked)
  double* conf = nullptr;           // optional out [batch, block_len]: confidence (-inf if not masked)
  int64_t* masks_left = nullptr;    // optional out [batch]

  // CUDA only (the CPU ignores them): caller-provided scratch of at least
  // remask_workspace_bytes(batch, block_len) bytes, 16-byte aligned, zeroed once by the caller.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

constexpr int64_t kRemaskMaxBlockCuda = 8192;

// Scratch that remask_cuda needs for a [batch, block_len] block (host function, no CUDA calls).
inline size_t remask_workspace_bytes(int64_t batch, int64_t block_len) {
  return 16 + size_t(batch) * size_t(block_len) * (sizeof(int64_t) + sizeof(double));
}

void remask_cpu(const RemaskParams& p);
void remask_cuda(const RemaskParams& p, void* stream);

}  // namespace illada
