// Bidirectional GQA attention on the GPU (semantics in attention.h):
//   out[b, i, h] = sum_j softmax_j(scale * <q[b, i, h], k[b, j, h / group]>) v[b, j, h / group]
// over unmasked keys j; a query row with no unmasked key gets zeros.
//
// bfloat16 / float16, head_dim 64 or 128: a flash-style kernel on tensor cores
// (mma.sync m16n8k16, fragments loaded with ldmatrix). One CTA = 4 warps = 64 query rows of
// one (batch, head); each warp owns 16 rows. Key/value tiles of 64 rows stream through a
// two-stage cp.async pipeline in shared memory; the scores of a tile stay in registers, the
// running max / sum (online softmax, base-2 exponent) and the output accumulator are float32.
// The softmax weights are rounded to the element type for the P.V product; the normaliser sums
// the rounded weights, so every output is a convex combination of the values.
// Shared memory rows are padded by 8 elements (16 bytes) so that the eight row addresses of
// an ldmatrix phase fall in distinct bank groups.
//
// float32: a plain CUDA-core kernel, one warp per query row, keys in chunks of 32 (one per
// lane), online softmax in float32; any head_dim <= 256, no alignment requirement.
#include <cmath>
#include <cstdint>

#include "attention.h"
#include "cuda_check.h"
#include "elem.cuh"

namespace illada {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

// ----------------------------------------------------------------------------- PTX helpers

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; src_valid false zero-fills the destination and reads nothing.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool src_valid) {
  const int src_bytes = src_valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lane l gives the address of row (l % 8) of matrix l / 8 and receives
// row l / 4, columns 2 (l % 4) + {0, 1} of each matrix (transposed: column l / 4, rows 2 (l % 4) + {0, 1}).
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p))
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p))
               : "memory");
}

// d[16x8] += a[16x16] b[16x8], float32 accumulators. Per lane (g = lane / 4, c = lane % 4):
//   a: {row g, cols 2c..2c+1}, {row g+8, 2c..}, {row g, 2c+8..}, {row g+8, 2c+8..}
//   b: {rows 2c..2c+1, col g}, {rows 2c+8..2c+9, col g}
//   d: d0, d1 at (row g, cols 2c, 2c+1), d2, d3 at (row g+8, cols 2c, 2c+1)
template <class T>
__device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to T, packed as one 32-bit register (lo in the low half), and back.
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return (uint32_t(__bfloat16_as_ushort(v.y)) << 16) | __bfloat16_as_ushort(v.x);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return (uint32_t(__half_as_ushort(v.y)) << 16) | __half_as_ushort(v.x);
}
template <class T>
__device__ __forceinline__ float2 unpack2(uint32_t bits);
template <>
__device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t bits) {
  return make_float2(__uint_as_float(bits << 16), __uint_as_float(bits & 0xffff0000u));
}
template <>
__device__ __forceinline__ float2 unpack2<__half>(uint32_t bits) {
  return make_float2(__half2float(__ushort_as_half(static_cast<unsigned short>(bits & 0xffffu))),
                     __half2float(__ushort_as_half(static_cast<unsigned short>(bits >> 16))));
}

// ----------------------------------------------------------------------------- tensor-core kernel

constexpr int kBlockM = 64;     // query rows per CTA
constexpr int kBlockN = 64;     // keys per tile
constexpr int kMmaWarps = 4;    // 16 query rows each
constexpr int kMmaThreads = kMmaWarps * 32;

template <int D>
struct MmaTile {
  static constexpr int kStride = D + 8;               // padded shared-memory row, elements
  static constexpr int kElems = kBlockM * kStride;    // one 64-row tile (kBlockM == kBlockN)
  static constexpr int kChunks = D / 8;               // 16-byte chunks per row
  // Q, K[2], V[2] tiles of 2-byte elements, then the key-valid bytes of both stages.
  static constexpr size_t kSmemBytes = size_t(5 * kElems) * 2 + 2 * kBlockN;
};

template <class T, int D>
__global__ void __launch_bounds__(kMmaThreads) attention_mma_kernel(const AttentionParams p, const float scale_log2) {
  using Tile = MmaTile<D>;
  constexpr int S = Tile::kStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);                                  // [64][S]
  T* sK = sQ + Tile::kElems;                                               // [2][64][S]
  T* sV = sK + 2 * Tile::kElems;                                           // [2][64][S]
  uint8_t* sKeyOk = reinterpret_cast<uint8_t*>(sV + 2 * Tile::kElems);     // [2][64]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int64_t q_begin = int64_t(blockIdx.x) * kBlockM;
  const int64_t kv_h = h / (p.heads / p.kv_heads);
  const T* qg = static_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh;
  const T* kg = static_cast<const T*>(p.k) + b * p.k_sb + kv_h * p.k_sh;
  const T* vg = static_cast<const T*>(p.v) + b * p.v_sb + kv_h * p.v_sh;
  const uint8_t* mask = p.key_mask ? p.key_mask + b * p.mask_stride : nullptr;
  const int64_t n_tiles = (p.seq_k + kBlockN - 1) / kBlockN;

  // Q tile (rows past seq_q zero-filled): cp.async group 0.
  for (int c = tid; c < kBlockM * Tile::kChunks; c += kMmaThreads) {
    const int r = c / Tile::kChunks, col = (c % Tile::kChunks) * 8;
    const int64_t row = q_begin + r;
    const bool ok = row < p.seq_q;
    cp_async_16(sQ + r * S + col, ok ? qg + row * p.q_sl + col : qg, ok);
  }
  // K and V rows [tile * 64, +64) into `stage`; rows past seq_k and masked keys are zeros and
  // marked invalid (never read, as on the CPU: a masked key's V may hold anything, even Inf).
  auto load_kv = [&](int64_t tile, int stage) {
    const int64_t k_begin = tile * kBlockN;
    T* dk = sK + stage * Tile::kElems;
    T* dv = sV + stage * Tile::kElems;
    for (int c = tid; c < kBlockN * Tile::kChunks; c += kMmaThreads) {
      const int r = c / Tile::kChunks, col = (c % Tile::kChunks) * 8;
      const int64_t key = k_begin + r;
      const bool ok = key < p.seq_k && (mask == nullptr || mask[key] != 0);
      cp_async_16(dk + r * S + col, ok ? kg + key * p.k_sl + col : kg, ok);
      cp_async_16(dv + r * S + col, ok ? vg + key * p.v_sl + col : vg, ok);
    }
    if (tid < kBlockN) {
      const int64_t key = k_begin + tid;
      sKeyOk[stage * kBlockN + tid] = key < p.seq_k && (mask == nullptr || mask[key] != 0);
    }
  };
  cp_async_commit();
  if (n_tiles > 0) load_kv(0, 0);  // group 1
  cp_async_commit();

  cp_async_wait<1>();
  __syncthreads();
  uint32_t q_frag[D / 16][4];  // A fragments of this warp's 16 query rows, for every key tile
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldmatrix_x4(q_frag[kk], sQ + (warp * 16 + (lane & 15)) * S + kk * 16 + (lane >> 4) * 8);

  float acc[D / 8][4];                        // O accumulator: 8-column n-tiles of head_dim
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
  // Rows g = lane / 4 and g + 8 of the warp: running max (scaled, base 2) and this lane's
  // partial sum of the rounded weights (the four lanes of a row are added at the end).
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

  for (int64_t t = 0; t < n_tiles; ++t) {
    const int stage = int(t & 1);
    // Prefetch the next tile into the other stage: every warp finished reading it at the end
    // of the previous iteration.
    if (t + 1 < n_tiles) load_kv(t + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // all but the newest group: tile t has landed
    __syncthreads();

    // S = Q K^T for the warp's 16 rows x 64 keys: 8 n-tiles of 8 keys.
    const T* k_tile = sK + stage * Tile::kElems;
    float s[kBlockN / 8][4];
#pragma unroll
    for (int n = 0; n < kBlockN / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kBlockN / 16; ++np) {  // keys [16 np, 16 np + 16): two n-tiles
        uint32_t kb[4];  // {keys +0..7: d 0..7, d 8..15}, {keys +8..15: d 0..7, d 8..15}
        ldmatrix_x4(kb, k_tile + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * S + kk * 16 + ((lane >> 3) & 1) * 8);
        mma_16816<T>(s[2 * np], q_frag[kk], kb[0], kb[1]);
        mma_16816<T>(s[2 * np + 1], q_frag[kk], kb[2], kb[3]);
      }
    }

    // Scale to base 2, mask, and update the running max of rows g (e = 0, 1) and g + 8 (e = 2, 3).
    const uint8_t* key_ok = sKeyOk + stage * kBlockN;
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kBlockN / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = n * 8 + 2 * (lane & 3) + (e & 1);
        const float x = key_ok[col] ? s[n][e] * scale_log2 : -INFINITY;
        s[n][e] = x;
        tile_max[e >> 1] = fmaxf(tile_max[e >> 1], x);
      }
    }
    float ref[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
      const float m_new = fmaxf(row_max[r], tile_max[r]);
      ref[r] = m_new == -INFINITY ? 0.0f : m_new;        // no key seen yet: weights are all 0
      const float alpha = exp2f(row_max[r] - ref[r]);    // old max -inf: 0 (nothing accumulated)
      row_max[r] = m_new;
      row_sum[r] *= alpha;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        acc[n][2 * r] *= alpha;
        acc[n][2 * r + 1] *= alpha;
      }
    }

    // P = exp2(s - max), rounded to T and laid out as A fragments (k = the tile's keys).
    uint32_t p_frag[kBlockN / 16][4];
#pragma unroll
    for (int n = 0; n < kBlockN / 8; ++n) {
      const uint32_t lo = pack2<T>(exp2f(s[n][0] - ref[0]), exp2f(s[n][1] - ref[0]));  // row g
      const uint32_t hi = pack2<T>(exp2f(s[n][2] - ref[1]), exp2f(s[n][3] - ref[1]));  // row g + 8
      const float2 lo_f = unpack2<T>(lo), hi_f = unpack2<T>(hi);
      row_sum[0] += lo_f.x + lo_f.y;
      row_sum[1] += hi_f.x + hi_f.y;
      p_frag[n >> 1][(n & 1) * 2] = lo;
      p_frag[n >> 1][(n & 1) * 2 + 1] = hi;
    }

    // O += P V: V tile [key][d] is the row-major B operand; ldmatrix.trans gives its fragments.
    const T* v_tile = sV + stage * Tile::kElems;
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {  // head_dim columns [16 dp, 16 dp + 16): two n-tiles
        uint32_t vb[4];  // {d +0..7: keys 0..7, keys 8..15}, {d +8..15: keys 0..7, keys 8..15}
        ldmatrix_x4_trans(vb, v_tile + (kk * 16 + (lane & 15)) * S + dp * 16 + (lane >> 4) * 8);
        mma_16816<T>(acc[2 * dp], p_frag[kk], vb[0], vb[1]);
        mma_16816<T>(acc[2 * dp + 1], p_frag[kk], vb[2], vb[3]);
      }
    }
    __syncthreads();  // the stage is overwritten by the prefetch of the next iteration
  }
  cp_async_wait<0>();  // only empty groups remain; each warp now reuses its own 16 rows of sQ
  __syncwarp();

  // Normalise and stage the warp's 16 output rows in its own rows of sQ, then store them
  // with 16-byte writes.
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    inv[r] = sum > 0.0f ? 1.0f / sum : 0.0f;  // no unmasked key: zeros
  }
  T* s_out = sQ + warp * 16 * S;
  const int g = lane >> 2;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int col = n * 8 + 2 * (lane & 3);
    *reinterpret_cast<uint32_t*>(s_out + g * S + col) = pack2<T>(acc[n][0] * inv[0], acc[n][1] * inv[0]);
    *reinterpret_cast<uint32_t*>(s_out + (g + 8) * S + col) = pack2<T>(acc[n][2] * inv[1], acc[n][3] * inv[1]);
  }
  __syncwarp();
  T* og = static_cast<T*>(p.out) + b * p.o_sb + h * p.o_sh;
  for (int c = lane; c < 16 * Tile::kChunks; c += 32) {
    const int r = c / Tile::kChunks, col = (c % Tile::kChunks) * 8;
    const int64_t row = q_begin + warp * 16 + r;
    if (row < p.seq_q)
      *reinterpret_cast<uint4*>(og + row * p.o_sl + col) = *reinterpret_cast<const uint4*>(s_out + r * S + col);
  }
}

// ----------------------------------------------------------------------------- float32 kernel

constexpr int kF32Warps = 4;
constexpr int kF32MaxDim = 256;
constexpr int kF32PerLane = kF32MaxDim / 32;

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One warp per query row (b, h, i), flattened as ((b * heads) + h) * seq_q + i.
// Keys in chunks of 32: lane j scores key chunk + j; the chunk's weights are then broadcast
// and each lane accumulates its head_dim columns lane, lane + 32, ...
__global__ void __launch_bounds__(kF32Warps * 32) attention_f32_kernel(const AttentionParams p) {
  __shared__ float s_q[kF32Warps][kF32MaxDim];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kF32Warps + warp;
  if (row >= p.batch * p.heads * p.seq_q) return;  // whole warps only; no CTA-wide barrier below
  const int64_t i = row % p.seq_q, h = (row / p.seq_q) % p.heads, b = row / (p.seq_q * p.heads);
  const int64_t kv_h = h / (p.heads / p.kv_heads);
  const int D = int(p.head_dim);
  const float* q = static_cast<const float*>(p.q) + b * p.q_sb + i * p.q_sl + h * p.q_sh;
  const float* kbase = static_cast<const float*>(p.k) + b * p.k_sb + kv_h * p.k_sh;
  const float* vbase = static_cast<const float*>(p.v) + b * p.v_sb + kv_h * p.v_sh;
  const uint8_t* mask = p.key_mask ? p.key_mask + b * p.mask_stride : nullptr;
  float* sq = s_q[warp];
  for (int d = lane; d < D; d += 32) sq[d] = q[d];
  __syncwarp();

  float acc[kF32PerLane];
#pragma unroll
  for (int u = 0; u < kF32PerLane; ++u) acc[u] = 0.0f;
  float run_max = -INFINITY, run_sum = 0.0f;
  for (int64_t j0 = 0; j0 < p.seq_k; j0 += 32) {
    const int64_t j = j0 + lane;
    float score = -INFINITY;
    if (j < p.seq_k && (mask == nullptr || mask[j] != 0)) {
      const float* kr = kbase + j * p.k_sl;
      float dot = 0.0f;
      for (int d = 0; d < D; ++d) dot += sq[d] * kr[d];
      score = dot * p.scale;
    }
    const float m_new = fmaxf(run_max, warp_max(score));
    const float ref = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = expf(run_max - ref);
    const float w = expf(score - ref);  // 0 for masked and out-of-range keys
    run_sum = run_sum * alpha + warp_sum(w);
    run_max = m_new;
#pragma unroll
    for (int u = 0; u < kF32PerLane; ++u) acc[u] *= alpha;
    for (int jj = 0; jj < 32; ++jj) {
      const float wj = __shfl_sync(0xffffffffu, w, jj);
      if (wj != 0.0f) {  // warp-uniform; never reads V of a masked or out-of-range key
        const float* vr = vbase + (j0 + jj) * p.v_sl;
#pragma unroll
        for (int u = 0; u < kF32PerLane; ++u) {
          const int d = lane + 32 * u;
          if (d < D) acc[u] += wj * vr[d];
        }
      }
    }
  }
  const float inv = run_sum > 0.0f ? 1.0f / run_sum : 0.0f;
  float* o = static_cast<float*>(p.out) + b * p.o_sb + i * p.o_sl + h * p.o_sh;
#pragma unroll
  for (int u = 0; u < kF32PerLane; ++u) {
    const int d = lane + 32 * u;
    if (d < D) o[d] = acc[u] * inv;
  }
}

template <class T, int D>
void launch_mma(const AttentionParams& p, cudaStream_t stream) {
  const size_t smem = MmaTile<D>::kSmemBytes;
  auto kernel = attention_mma_kernel<T, D>;
  ILLADA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
                    "attention kernel shared-memory attribute");
  const dim3 grid(unsigned((p.seq_q + kBlockM - 1) / kBlockM), unsigned(p.heads), unsigned(p.batch));
  kernel<<<grid, kMmaThreads, smem, stream>>>(p, p.scale * kLog2e);
  ILLADA_CUDA_LAUNCH_CHECK("attention kernel launch");
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }
// A stride only matters when its dim has more than one index.
bool stride_ok(int64_t stride, int64_t size) { return size <= 1 || stride % 8 == 0; }

}  // namespace

void attention_cuda(const AttentionParams& p, void* stream) {
  ILLADA_CHECK(p.kv_heads > 0 && p.heads % p.kv_heads == 0,
               "attention (CUDA): heads " << p.heads << " not divisible by kv heads " << p.kv_heads);
  if (p.batch == 0 || p.seq_q == 0 || p.heads == 0) return;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::Float32) {
    ILLADA_CHECK(p.head_dim > 0 && p.head_dim <= kF32MaxDim,
                 "attention (CUDA, float32): head_dim must be in [1, " << kF32MaxDim << "], got " << p.head_dim);
    const int64_t rows = p.batch * p.heads * p.seq_q;
    const int64_t blocks = (rows + kF32Warps - 1) / kF32Warps;
    ILLADA_CHECK(blocks <= 0x7fffffff, "attention (CUDA, float32): " << rows << " query rows exceed the launch grid");
    attention_f32_kernel<<<unsigned(blocks), kF32Warps * 32, 0, s>>>(p);
    ILLADA_CUDA_LAUNCH_CHECK("attention float32 kernel launch");
    return;
  }
  ILLADA_CHECK(p.dtype == DType::BFloat16 || p.dtype == DType::Float16,
               "attention (CUDA): unsupported dtype " << dtype_name(p.dtype));
  ILLADA_CHECK(p.head_dim == 64 || p.head_dim == 128,
               "attention (CUDA): bfloat16/float16 kernels exist for head_dim 64 and 128, got " << p.head_dim);
  ILLADA_CHECK(aligned16(p.q) && aligned16(p.k) && aligned16(p.v) && aligned16(p.out) &&
                   stride_ok(p.q_sb, p.batch) && stride_ok(p.q_sl, p.seq_q) && stride_ok(p.q_sh, p.heads) &&
                   stride_ok(p.k_sb, p.batch) && stride_ok(p.k_sl, p.seq_k) && stride_ok(p.k_sh, p.kv_heads) &&
                   stride_ok(p.v_sb, p.batch) && stride_ok(p.v_sl, p.seq_k) && stride_ok(p.v_sh, p.kv_heads) &&
                   stride_ok(p.o_sb, p.batch) && stride_ok(p.o_sl, p.seq_q) && stride_ok(p.o_sh, p.heads),
               "attention (CUDA): every q/k/v/out row must start on a 16-byte boundary (16-byte aligned "
               "data pointers, batch/seq/head strides multiples of 8 elements)");
  ILLADA_CHECK(p.heads <= 65535 && p.batch <= 65535 && (p.seq_q + kBlockM - 1) / kBlockM <= 0x7fffffff,
               "attention (CUDA): batch " << p.batch << " x heads " << p.heads << " exceed the launch grid");
  if (p.dtype == DType::BFloat16) {
    if (p.head_dim == 64) launch_mma<__nv_bfloat16, 64>(p, s);
    else launch_mma<__nv_bfloat16, 128>(p, s);
  } else {
    if (p.head_dim == 64) launch_mma<__half, 64>(p, s);
    else launch_mma<__half, 128>(p, s);
  }
}

}  // namespace illada
