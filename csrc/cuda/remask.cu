// Remask on the GPU (semantics in remask.h): two kernels on the caller's stream, no host
// synchronisation, scratch in the caller's workspace.
//
// 1. remask_rows_kernel, one CTA of 512 threads per block row (b, i); rows whose token is not
//    [MASK] leave at once. One sweep over the row's vocabulary, 8 consecutive entries per
//    thread per step (16-byte loads when the row is aligned, one Philox call per 4 entries):
//      l       = un + w (cond - un) in float32, w = float(cfg_scale + 1), no FMA (as the CPU)
//      score   = l - T log(-log u)   in float64 with the CPU's rounding (T = 0: score = l)
//      x0      = argmax_{v != mask_id} score, ties to the lowest v
//      max, s  = online max and sum of exp(l - max): float32 exp terms added in float64
//      conf    = exp(l[x0] - max) / s   (float64), or the stream-1 uniform for random remasking
//    Per-thread states are merged by warp shuffles and then across warps in shared memory.
//    A NaN or +inf logit, or a row with no finite choice, sets the sticky error word.
// 2. remask_select_kernel, one CTA per sequence: the block's (conf, row) pairs are
//    bitonic-sorted in shared memory by conf descending, row ascending (the CPU's stable
//    sort); the first `take` rows of that order receive x0 (take = min(max(k, 0), masked) or
//    max(#{conf >= threshold}, 1)), then x0 / conf / masks_left are written.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "cuda_check.h"
#include "elem.cuh"
#include "philox.h"
#include "remask.h"

namespace illada {
namespace {

constexpr int kRowThreads = 512;
constexpr int kRowWarps = kRowThreads / 32;
constexpr int kChunk = 8;  // consecutive vocabulary entries per thread per step

struct Workspace {
  unsigned int* error;  // sticky: non-zero once any row had non-finite logits
  int64_t* token;       // [batch, block_len] x0 of masked rows, -1 elsewhere
  double* conf;         // [batch, block_len] confidence of masked rows, -inf elsewhere
};

Workspace carve(void* base, int64_t batch, int64_t block_len) {
  char* bytes = static_cast<char*>(base);
  Workspace ws;
  ws.error = reinterpret_cast<unsigned int*>(bytes);
  ws.token = reinterpret_cast<int64_t*>(bytes + 16);
  ws.conf = reinterpret_cast<double*>(bytes + 16 + size_t(batch) * size_t(block_len) * sizeof(int64_t));
  return ws;
}

// ----------------------------------------------------------------------------- phase 1

// 8 entries of a row from v0 on, as float; entries past `vocab` read as 0 (never used).
__device__ __forceinline__ float bits_to_float(uint32_t bits16, __nv_bfloat16*) { return __uint_as_float(bits16 << 16); }
__device__ __forceinline__ float bits_to_float(uint32_t bits16, __half*) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits16)));
}

template <class T>
__device__ __forceinline__ void load_chunk(const T* row, int64_t v0, int64_t vocab, bool vec, float out[kChunk]) {
  if (vec && v0 + kChunk <= vocab) {
    if constexpr (sizeof(T) == 4) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(row + v0));
      const float4 b = __ldg(reinterpret_cast<const float4*>(row + v0 + 4));
      out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
      out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
    } else {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row + v0));
      const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        out[2 * e] = bits_to_float(w[e] & 0xffffu, static_cast<T*>(nullptr));
        out[2 * e + 1] = bits_to_float(w[e] >> 16, static_cast<T*>(nullptr));
      }
    }
  } else {
#pragma unroll
    for (int e = 0; e < kChunk; ++e) out[e] = v0 + e < vocab ? dev_to_float(row[v0 + e]) : 0.0f;
  }
}

// A thread's (then a CTA's) summary of the entries it has seen.
struct RowState {
  float max_l;        // max of l
  double sum;         // sum of exp(l - max_l)
  double best_score;  // score of the best non-mask entry
  float best_l;       // its l
  int best;           // its index, -1 before the first non-mask entry
};

__device__ __forceinline__ void merge(RowState& a, const RowState& o) {
  const float m = fmaxf(a.max_l, o.max_l);
  double s = 0.0;
  if (a.max_l != -INFINITY) s += a.sum * exp(double(a.max_l) - double(m));
  if (o.max_l != -INFINITY) s += o.sum * exp(double(o.max_l) - double(m));
  a.max_l = m;
  a.sum = s;
  if (o.best >= 0 &&
      (a.best < 0 || o.best_score > a.best_score || (o.best_score == a.best_score && o.best < a.best))) {
    a.best = o.best;
    a.best_score = o.best_score;
    a.best_l = o.best_l;
  }
}

__device__ __forceinline__ RowState shfl_xor(const RowState& s, int lane_mask) {
  RowState o;
  o.max_l = __shfl_xor_sync(0xffffffffu, s.max_l, lane_mask);
  o.sum = __shfl_xor_sync(0xffffffffu, s.sum, lane_mask);
  o.best_score = __shfl_xor_sync(0xffffffffu, s.best_score, lane_mask);
  o.best_l = __shfl_xor_sync(0xffffffffu, s.best_l, lane_mask);
  o.best = __shfl_xor_sync(0xffffffffu, s.best, lane_mask);
  return o;
}

template <class T>
__global__ void __launch_bounds__(kRowThreads) remask_rows_kernel(const RemaskParams p, const float cfg_w, Workspace ws) {
  __shared__ RowState warp_states[kRowWarps];
  const int64_t b = blockIdx.x / p.block_len, i = blockIdx.x % p.block_len;
  const int64_t slot = b * p.block_len + i;
  if (p.tokens[b * p.tokens_sb + p.block_start + i] != p.mask_id) {  // same value for the whole CTA
    if (threadIdx.x == 0) {
      ws.token[slot] = -1;
      ws.conf[slot] = -INFINITY;
    }
    return;
  }
  const int64_t off = b * p.logits_sb + i * p.logits_sl;
  const T* cond = static_cast<const T*>(p.logits) + off;
  const T* un = p.uncond ? static_cast<const T*>(p.uncond) + off : nullptr;
  const bool vec = reinterpret_cast<uintptr_t>(cond) % 16 == 0 && (un == nullptr || reinterpret_cast<uintptr_t>(un) % 16 == 0);
  const uint64_t seed = uint64_t(p.seeds[b]);
  const uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  const uint32_t pos = uint32_t(p.block_start + i - p.row_offset[b]), step = uint32_t(p.step[b]);
  const bool gumbel = p.temperature > 0.0;

  RowState st{-INFINITY, 0.0, -INFINITY, -INFINITY, -1};
  bool bad = false;
  for (int64_t v0 = int64_t(threadIdx.x) * kChunk; v0 < p.vocab; v0 += int64_t(kRowThreads) * kChunk) {
    float l[kChunk];
    load_chunk(cond, v0, p.vocab, vec, l);
    if (un) {
      float u[kChunk];
      load_chunk(un, v0, p.vocab, vec, u);
#pragma unroll
      for (int e = 0; e < kChunk; ++e) l[e] = __fadd_rn(u[e], __fmul_rn(cfg_w, __fsub_rn(l[e], u[e])));
    }
    Philox4 words[kChunk / 4];
    if (gumbel) {
#pragma unroll
      for (int q = 0; q < kChunk / 4; ++q)
        words[q] = philox4x32(uint32_t(v0 >> 2) + uint32_t(q), pos, step, kGumbelStream, k0, k1);
    }
#pragma unroll
    for (int e = 0; e < kChunk; ++e) {
      const int64_t v = v0 + e;
      if (v < p.vocab) {
        const float x = l[e];
        bad |= !(x < INFINITY);  // NaN or +inf
        if (x > st.max_l) {
          st.sum = st.sum * double(expf(st.max_l - x)) + 1.0;
          st.max_l = x;
        } else if (x != -INFINITY) {
          st.sum += double(expf(x - st.max_l));
        }
        double score = double(x);
        if (gumbel) {
          const double u = philox_uniform(words[e >> 2].v[e & 3]);
          score = __dsub_rn(score, __dmul_rn(p.temperature, log(-log(u))));
        }
        // within a thread v increases: the first maximum wins, as on the CPU
        if (v != p.mask_id && (st.best < 0 || score > st.best_score)) {
          st.best = int(v);
          st.best_score = score;
          st.best_l = x;
        }
      }
    }
  }

  const bool any_bad = __syncthreads_or(bad) != 0;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) merge(st, shfl_xor(st, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) warp_states[warp] = st;
  __syncthreads();
  if (warp != 0) return;
  st = warp_states[lane < kRowWarps ? lane : 0];
  if (lane >= kRowWarps) st = RowState{-INFINITY, 0.0, -INFINITY, -INFINITY, -1};
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) merge(st, shfl_xor(st, o));
  if (lane != 0) return;

  const bool ok = !any_bad && st.best >= 0 && st.max_l != -INFINITY && st.sum > 0.0 && st.sum < INFINITY;
  double conf = -INFINITY;
  if (!ok) {
    atomicOr(ws.error, 1u);
  } else if (p.mode == RemaskMode::Random) {
    conf = philox_uniform(philox4x32(0u, pos, step, kRandomRemaskStream, k0, k1).v[0]);
  } else {
    conf = exp(double(st.best_l) - double(st.max_l)) / st.sum;
  }
  ws.token[slot] = st.best >= 0 ? st.best : 0;  // >= 0 marks the row as masked for phase 2
  ws.conf[slot] = conf;
}

// ----------------------------------------------------------------------------- phase 2

// Sorted order: higher conf first, then lower row (rows are distinct: a strict total order).
__device__ __forceinline__ bool precedes(double conf_a, int row_a, double conf_b, int row_b) {
  return conf_a > conf_b || (conf_a == conf_b && row_a < row_b);
}

// One CTA per sequence; n_sort = the power of two >= block_len; dynamic shared memory:
// double key[n_sort], int row[n_sort].
__global__ void __launch_bounds__(1024) remask_select_kernel(const RemaskParams p, Workspace ws, int n_sort) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  double* key = reinterpret_cast<double*>(smem_raw);
  int* row = reinterpret_cast<int*>(key + n_sort);
  __shared__ int n_masked, n_above;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int64_t b = blockIdx.x, Lb = p.block_len;
  const int64_t* token = ws.token + b * Lb;
  const double* conf = ws.conf + b * Lb;
  if (tid == 0) n_masked = n_above = 0;
  __syncthreads();

  int my_masked = 0, my_above = 0;
  for (int r = tid; r < n_sort; r += nthreads) {
    double c = -INFINITY;
    if (r < Lb) {
      c = conf[r];
      if (token[r] >= 0) {
        ++my_masked;
        my_above += c >= p.threshold;
      }
    }
    key[r] = c;  // padding entries: -inf with rows >= block_len, so they sort last
    row[r] = r;
  }
  if (my_masked) atomicAdd(&n_masked, my_masked);
  if (my_above) atomicAdd(&n_above, my_above);
  __syncthreads();

  // Bitonic sort into `precedes` order.
  for (int size = 2; size <= n_sort; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int x = tid; x < n_sort; x += nthreads) {
        const int y = x ^ stride;
        if (y > x) {
          const double kx = key[x], ky = key[y];
          const int rx = row[x], ry = row[y];
          const bool y_first = precedes(ky, ry, kx, rx);
          if ((x & size) == 0 ? y_first : !y_first) {
            key[x] = ky; key[y] = kx;
            row[x] = ry; row[y] = rx;
          }
        }
      }
      __syncthreads();
    }
  }

  // Masked rows have finite conf (or the error word is set), so they lead the order.
  const int64_t masked = n_masked;
  int64_t take;
  if (p.k) {
    const int64_t want = p.k[b];
    take = want < 0 ? 0 : (want > masked ? masked : want);
  } else {
    take = masked == 0 ? 0 : (n_above > 1 ? n_above : 1);
  }
  if (*reinterpret_cast<volatile unsigned int*>(ws.error) != 0) take = 0;  // non-finite logits: transfer nothing

  int64_t* block_tokens = p.tokens + b * p.tokens_sb + p.block_start;
  for (int64_t t = tid; t < take; t += nthreads) block_tokens[row[t]] = token[row[t]];
  for (int64_t r = tid; r < Lb; r += nthreads) {
    if (p.x0) p.x0[b * Lb + r] = token[r];
    if (p.conf) p.conf[b * Lb + r] = conf[r];
  }
  if (tid == 0 && p.masks_left) p.masks_left[b] = masked - take;
}

}  // namespace

void remask_cuda(const RemaskParams& p, void* stream) {
  const int64_t B = p.batch, Lb = p.block_len;
  if (B == 0) return;
  ILLADA_CHECK(Lb >= 0 && Lb <= kRemaskMaxBlockCuda,
               "remask (CUDA): block length " << Lb << " exceeds " << kRemaskMaxBlockCuda);
  ILLADA_CHECK(B * Lb <= INT_MAX && B <= INT_MAX, "remask (CUDA): batch " << B << " x block " << Lb << " too large");
  ILLADA_CHECK(p.vocab > 0 && p.vocab <= INT_MAX - kChunk, "remask (CUDA): vocab " << p.vocab << " out of range");
  ILLADA_CHECK(p.workspace != nullptr && p.workspace_bytes >= remask_workspace_bytes(B, Lb),
               "remask (CUDA): needs a workspace of remask_workspace_bytes(" << B << ", " << Lb << ") = "
                   << remask_workspace_bytes(B, Lb) << " bytes, got " << p.workspace_bytes);
  ILLADA_CHECK(reinterpret_cast<uintptr_t>(p.workspace) % 16 == 0, "remask (CUDA): workspace must be 16-byte aligned");
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const Workspace ws = carve(p.workspace, B, Lb);

  if (Lb > 0) {
    const float cfg_w = float(p.cfg_scale + 1.0);  // rounded once, as torch rounds the Python scalar
    ILLADA_DISPATCH_DEVICE_FLOAT(p.logits_dtype, T, [&] {
      remask_rows_kernel<T><<<unsigned(B * Lb), kRowThreads, 0, s>>>(p, cfg_w, ws);
    });
    ILLADA_CUDA_LAUNCH_CHECK("remask rows kernel launch");
  }

  int n_sort = 1;
  while (n_sort < Lb) n_sort <<= 1;
  const int threads = std::max(32, std::min(1024, ((n_sort / 2 + 31) / 32) * 32));
  const size_t smem = size_t(n_sort) * (sizeof(double) + sizeof(int));
  if (smem + 1024 > 48 * 1024)  // the 48 KiB default covers static + dynamic shared memory
    ILLADA_CUDA_CHECK(cudaFuncSetAttribute(remask_select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
                      "remask select kernel shared-memory attribute");
  remask_select_kernel<<<unsigned(B), threads, smem, s>>>(p, ws, n_sort);
  ILLADA_CUDA_LAUNCH_CHECK("remask select kernel launch");
}

}  // namespace illada
