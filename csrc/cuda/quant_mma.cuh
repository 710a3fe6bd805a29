// Small-M weight-quantized matmul on tensor cores: y[m, n] = sum_k x[m, k] * w[n, k]
// (x [M, K] bf16/fp16, w int8 or int4 as in quant_matmul.h). Built for small M: every block of
// 8, 16 or 32 tokens reads its weight rows again (from L2 after the first), so past some M,
// measured by bench/bench_quant_matmul.py, dequantize + cuBLAS wins.
//
// Roles: the weight is the mma's A operand (16 weight rows x 16 k), x the B operand (16 k x 8
// tokens), so y^T tiles [16 rows x 8 tokens] accumulate in float32 (mma.sync m16n8k16).
// A block owns kBlockRows = 32 weight rows and up to 8*NT tokens; its kWarps warps split K,
// warp w taking the 64*CH-wide k slices w, w + kWarps, ... (adjacent warps read adjacent
// bytes of a row), and the warps' partial sums meet in shared memory at the end. Each warp
// keeps the next slice's weight loads in flight while it multiplies the current one.
//
// Fragment layout (PTX ISA, mma.m16n8k16 with 16-bit A/B; g = lane / 4, t = lane % 4):
//   A regs a0..a3 (two halves each):  a0 = (row g,   cols 2t, 2t+1)   a1 = (row g+8, cols 2t, 2t+1)
//                                     a2 = (row g,   cols 2t+8, 2t+9) a3 = (row g+8, cols 2t+8, 2t+9)
//   B regs b0, b1:                    b0 = (rows 2t, 2t+1; col g)     b1 = (rows 2t+8, 2t+9; col g)
//   C (f32) c0..c3:                   c0, c1 = (row g, cols 2t, 2t+1) c2, c3 = (row g+8, same cols)
// A dot product does not care which k a column of the mma stands for, only that A and B agree.
// So thread t of a quad reads kPerThread = 16*CH *contiguous* k from base_t = slice + t*kPerThread
// (one 16-byte load per weight row: 16 int8 or 32 int4 codes; 2*CH 16-byte loads per token of
// x) and mma step s (of 4*CH) maps the logical columns to physical k as
//   cols 2t, 2t+1   -> base_t + 4s, base_t + 4s + 1      (weight pair 2s   of the thread's run)
//   cols 2t+8, 2t+9 -> base_t + 4s + 2, base_t + 4s + 3  (weight pair 2s+1)
// and B takes x pairs 2s and 2s+1 of the same run: each quad covers 16 distinct k a step, the
// 4*CH steps of a slice cover all 64*CH.
//
// Dequantization happens in registers: int8 codes become exact integers in T (|q| <= 127), the
// per-row scale multiplies the float32 sum at the end; int4 weights become round_T((c - z) * s)
// (the group of a thread's 32-k run is one, since G % 32 == 0), exactly formats.dequantize(.., T).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda_check.h"
#include "elem.cuh"
#include "quant_matmul.h"

namespace illada {
namespace quant_mma {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kRowTiles = 2;                 // 16-row mma tiles per block
constexpr int kBlockRows = 16 * kRowTiles;

template <int BITS> struct Slice {
  static constexpr int kCh = BITS == 8 ? 1 : 2;
  static constexpr int kPerThread = 16 * kCh;  // contiguous k a thread reads per slice
  static constexpr int kWidth = 4 * kPerThread;  // k per slice (a quad of threads)
  static constexpr int kSteps = 4 * kCh;       // mma k-steps per slice
  static constexpr int kPairs = 8 * kCh;       // element pairs per thread and row
};

__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                          __nv_bfloat16*) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, __half*) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats -> one register of two T, the first in the low half (the lower k).
__device__ __forceinline__ uint32_t pack2(float lo, float hi, __nv_bfloat16*) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi, __half*) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// One weight row's 16 loaded bytes and its group's (scale, zero) -> pair p as two T.
template <class T, int BITS>
__device__ __forceinline__ uint32_t weight_pair(const uint4& raw, int p, float s, float z) {
  if (BITS == 8) {  // bytes 2p, 2p+1: k = base + 2p, base + 2p + 1
    const uint32_t w = word(raw, p / 2) >> (16 * (p % 2));
    return pack2(float(int8_t(w & 0xffu)), float(int8_t((w >> 8) & 0xffu)), static_cast<T*>(nullptr));
  }
  const uint32_t byte = (word(raw, p / 4) >> (8 * (p % 4))) & 0xffu;  // k = base + 2p (low), + 2p + 1 (high)
  return pack2((float(byte & 15u) - z) * s, (float(byte >> 4) - z) * s, static_cast<T*>(nullptr));
}

// A thread's weights for one slice: rows row0 + 16*rt + g + 8*h (h = 0, 1), 16 bytes each from
// k = base, and (int4) the group's scale and zero point; rows past N read as zeros.
template <int RT>
struct WeightRegs {
  uint4 raw[RT][2];
  float scale[RT][2], zero[RT][2];
};

template <int BITS, int RT>
__device__ __forceinline__ void load_weights(const PackedWeight& w, int64_t row0, int g, int64_t base,
                                             WeightRegs<RT>& r) {
  const uint8_t* q = static_cast<const uint8_t*>(w.qweight);
#pragma unroll
  for (int rt = 0; rt < RT; ++rt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t n = row0 + 16 * rt + g + 8 * h;
      r.raw[rt][h] = make_uint4(0, 0, 0, 0);
      r.scale[rt][h] = 0.0f;
      r.zero[rt][h] = 0.0f;
      if (n < w.n) {
        r.raw[rt][h] = __ldg(reinterpret_cast<const uint4*>(q + n * w.q_stride + base * BITS / 8));
        if (BITS == 4) {
          const int64_t gi = n * w.scale_stride + base / w.group_size;
          r.scale[rt][h] = __ldg(w.scale + gi);
          r.zero[rt][h] = w.zero ? __ldg(w.zero + gi) : 8.0f;
        }
      }
    }
}

template <class T, int BITS, int NT>
__global__ void __launch_bounds__(kThreads) quant_matmul_kernel(QuantMatmulParams p) {
  using S = Slice<BITS>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int64_t row0 = int64_t(blockIdx.x) * kBlockRows, tok0 = int64_t(blockIdx.y) * (8 * NT);
  const PackedWeight& w = p.w;
  const T* xbase = static_cast<const T*>(p.x);

  float acc[kRowTiles][NT][4];
#pragma unroll
  for (int rt = 0; rt < kRowTiles; ++rt)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[rt][j][i] = 0.0f;

  // The next slice's weights load while this slice's mma run (double-buffered registers).
  const int64_t slices = w.k / S::kWidth;
  const int64_t quad_k = t * S::kPerThread;  // the thread's first k within a slice
  WeightRegs<kRowTiles> cur, next;
  if (warp < slices) load_weights<BITS>(w, row0, g, int64_t(warp) * S::kWidth + quad_k, cur);
  for (int64_t slice = warp; slice < slices; slice += kWarps) {
    const int64_t base = slice * S::kWidth + quad_k;
    const bool more = slice + kWarps < slices;
    if (more) load_weights<BITS>(w, row0, g, base + kWarps * S::kWidth, next);
    const auto& raw = cur.raw;
    const auto& sc = cur.scale;
    const auto& zp = cur.zero;
    // x: token tok0 + 8j + g, k in [base, base + kPerThread); tokens past M read as zeros.
    uint4 xr[NT][2 * S::kCh];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int64_t m = tok0 + 8 * j + g;
#pragma unroll
      for (int c = 0; c < 2 * S::kCh; ++c)
        xr[j][c] = m < p.m ? __ldg(reinterpret_cast<const uint4*>(xbase + m * p.x_stride + base) + c)
                           : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int s = 0; s < S::kSteps; ++s) {
#pragma unroll
      for (int rt = 0; rt < kRowTiles; ++rt) {
        const uint32_t a[4] = {weight_pair<T, BITS>(raw[rt][0], 2 * s, sc[rt][0], zp[rt][0]),
                               weight_pair<T, BITS>(raw[rt][1], 2 * s, sc[rt][1], zp[rt][1]),
                               weight_pair<T, BITS>(raw[rt][0], 2 * s + 1, sc[rt][0], zp[rt][0]),
                               weight_pair<T, BITS>(raw[rt][1], 2 * s + 1, sc[rt][1], zp[rt][1])};
#pragma unroll
        for (int j = 0; j < NT; ++j)  // x pairs 2s, 2s+1 sit in uint4 (2s)/4, words (2s)%4 and +1
          mma_16816(acc[rt][j], a, word(xr[j][s / 2], (2 * s) % 4), word(xr[j][s / 2], (2 * s) % 4 + 1),
                    static_cast<T*>(nullptr));
      }
    }
    if (more) cur = next;
  }

  // Sum the warps' partials: red[warp][row][token] (padded against bank conflicts).
  __shared__ float red[kWarps][kBlockRows][8 * NT + 1];
#pragma unroll
  for (int rt = 0; rt < kRowTiles; ++rt)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) red[warp][16 * rt + g + 8 * (i / 2)][8 * j + 2 * t + (i % 2)] = acc[rt][j][i];
  __syncthreads();
  T* y = static_cast<T*>(p.y);
  for (int idx = threadIdx.x; idx < kBlockRows * 8 * NT; idx += kThreads) {
    const int row = idx % kBlockRows, tok = idx / kBlockRows;  // consecutive threads: consecutive n
    const int64_t n = row0 + row, m = tok0 + tok;
    if (n >= w.n || m >= p.m) continue;
    float v = 0.0f;
#pragma unroll
    for (int wi = 0; wi < kWarps; ++wi) v += red[wi][row][tok];
    if (BITS == 8) v *= w.scale[n];
    y[m * p.y_stride + n] = dev_from_float<T>(v);
  }
}

// Launch for one weight width; tokens per block 8, 16 or 32 by M.
template <int BITS>
void launch(const QuantMatmulParams& p, cudaStream_t stream) {
  const unsigned row_blocks = unsigned((p.w.n + kBlockRows - 1) / kBlockRows);
  auto go = [&](auto nt_tag) {
    constexpr int NT = decltype(nt_tag)::value;
    const dim3 grid(row_blocks, unsigned((p.m + 8 * NT - 1) / (8 * NT)));
    if (p.dtype == DType::BFloat16) quant_matmul_kernel<__nv_bfloat16, BITS, NT><<<grid, kThreads, 0, stream>>>(p);
    else quant_matmul_kernel<__half, BITS, NT><<<grid, kThreads, 0, stream>>>(p);
  };
  if (p.m <= 8) go(std::integral_constant<int, 1>());
  else if (p.m <= 16) go(std::integral_constant<int, 2>());
  else go(std::integral_constant<int, 4>());
  ILLADA_CUDA_LAUNCH_CHECK("quant_matmul kernel launch (" << BITS << "-bit)");
}

}  // namespace quant_mma
}  // namespace illada
