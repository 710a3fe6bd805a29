// Bidirectional GQA attention on the CPU (see attention.h): for each (batch, head, query)
// one pass of scores over the unmasked keys, a float32 softmax, then the weighted sum of V.
#include "attention.h"
#include "parallel.h"

#include <cmath>
#include <limits>
#include <vector>

namespace illada {
namespace {

// <a, b> with eight independent partial sums, so the compiler can vectorise the loop
// (a single running sum would be a serial dependency chain under strict float semantics).
template <class T>
float dot(const float* a, const T* b, int64_t n) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= n; d += 8)
    for (int u = 0; u < 8; ++u) part[u] += a[d + u] * to_float(b[d + u]);
  float sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; d < n; ++d) sum += a[d] * to_float(b[d]);
  return sum;
}

template <class T>
void attention_rows(const AttentionParams& p) {
  const int64_t group = p.heads / p.kv_heads;
  const int64_t D = p.head_dim;
#pragma omp parallel if (worth_parallel(p.batch * p.heads * p.seq_q * p.seq_k * p.head_dim))
  {
    std::vector<float> scores(p.seq_k), qf(D), acc(D);
#pragma omp for collapse(3) schedule(static)
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t h = 0; h < p.heads; ++h) {
        for (int64_t i = 0; i < p.seq_q; ++i) {
          const int64_t kh = h / group;
          const T* q = static_cast<const T*>(p.q) + b * p.q_sb + i * p.q_sl + h * p.q_sh;
          const T* kbase = static_cast<const T*>(p.k) + b * p.k_sb + kh * p.k_sh;
          const T* vbase = static_cast<const T*>(p.v) + b * p.v_sb + kh * p.v_sh;
          const uint8_t* mask = p.key_mask ? p.key_mask + b * p.mask_stride : nullptr;
          for (int64_t d = 0; d < D; ++d) qf[d] = to_float(q[d]);

          float max_score = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j < p.seq_k; ++j) {
            if (mask && !mask[j]) continue;
            scores[j] = dot(qf.data(), kbase + j * p.k_sl, D) * p.scale;
            if (scores[j] > max_score) max_score = scores[j];
          }
          for (int64_t d = 0; d < D; ++d) acc[d] = 0.0f;
          float denom = 0.0f;
          if (max_score != -std::numeric_limits<float>::infinity()) {
            for (int64_t j = 0; j < p.seq_k; ++j) {
              if (mask && !mask[j]) continue;
              float e = std::exp(scores[j] - max_score);
              denom += e;
              const T* vr = vbase + j * p.v_sl;
              for (int64_t d = 0; d < D; ++d) acc[d] += e * to_float(vr[d]);
            }
          }
          const float inv = denom > 0.0f ? 1.0f / denom : 0.0f;
          T* o = static_cast<T*>(p.out) + b * p.o_sb + i * p.o_sl + h * p.o_sh;
          for (int64_t d = 0; d < D; ++d) o[d] = from_float<T>(acc[d] * inv);
        }
      }
    }
  }
}

}  // namespace

void attention_cpu(const AttentionParams& p) {
  ILLADA_DISPATCH_FLOAT(p.dtype, T, [&] { attention_rows<T>(p); });
}

}  // namespace illada
