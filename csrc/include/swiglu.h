// SwiGLU activation: out[r, j] = round(round(silu(gate[r, j])) * up[r, j]),
// silu(g) = g / (1 + exp(-g)) in float32, round() to the element type (torch's two ops).
#pragma once
#include <cstdint>

#include "dtype.h"

namespace illada {

struct SwigluParams {
  void* out = nullptr;           // [rows, cols], row stride out_stride
  const void* gate = nullptr;    // [rows, cols], row stride gate_stride
  const void* up = nullptr;      // [rows, cols], row stride up_stride
  int64_t rows = 0, cols = 0;
  int64_t out_stride = 0, gate_stride = 0, up_stride = 0;
  DType dtype = DType::Float32;
};

void swiglu_cpu(const SwigluParams& p);
// CUDA: device pointers; silu uses the accurate expf and an IEEE division.
void swiglu_cuda(const SwigluParams& p, void* stream);

}  // namespace illada
