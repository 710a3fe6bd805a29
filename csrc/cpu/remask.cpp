// One denoising step's choice and transfer for the current block (see remask.h).
#include "remask.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "philox.h"
#include "parallel.h"

namespace illada {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

struct Choice {
  int64_t token;
  double conf;
};

// Phase 1 for one masked row: argmax of the (perturbed, CFG-combined) logits and
// the softmax probability of the chosen token, in one sweep plus one exp-sum sweep.
template <class T>
Choice choose_row(const RemaskParams& p, const T* cond, const T* un, std::vector<float>& l,
                  int64_t b, int64_t position) {
  const float w = float(p.cfg_scale + 1.0);
  for (int64_t v = 0; v < p.vocab; ++v) {
    float c = to_float(cond[v]);
    if (un) {
      float u = to_float(un[v]);
      float diff = c - u;
      float scaled = w * diff;
      c = u + scaled;
    }
    l[v] = c;
  }
  const uint64_t seed = uint64_t(p.seeds[b]);
  const uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  const uint32_t pos = uint32_t(position), step = uint32_t(p.step[b]);

  int64_t best = -1;
  double best_score = kNegInf;
  float max_logit = -std::numeric_limits<float>::infinity();
  Philox4 words{};
  for (int64_t v = 0; v < p.vocab; ++v) {
    double score = l[v];
    if (p.temperature > 0.0) {
      if ((v & 3) == 0) words = philox4x32(uint32_t(v >> 2), pos, step, kGumbelStream, k0, k1);
      double u = philox_uniform(words.v[v & 3]);
      score = score - p.temperature * std::log(-std::log(u));
    }
    // First maximum wins ties; the mask token is never a prediction.
    if (v != p.mask_id && (best < 0 || score > best_score)) { best_score = score; best = v; }
    max_logit = std::max(max_logit, l[v]);
  }
  double sum = 0.0;
  for (int64_t v = 0; v < p.vocab; ++v) sum += std::exp(double(l[v]) - double(max_logit));
  if (best < 0) return Choice{0, std::numeric_limits<double>::quiet_NaN()};  // only [MASK] in the vocabulary
  double conf = std::exp(double(l[best]) - double(max_logit)) / sum;
  if (!std::isfinite(sum) || std::isnan(conf)) return Choice{best, std::numeric_limits<double>::quiet_NaN()};
  if (p.mode == RemaskMode::Random) {
    Philox4 r = philox4x32(0u, pos, step, kRandomRemaskStream, k0, k1);
    conf = philox_uniform(r.v[0]);
  }
  return Choice{best, conf};
}

template <class T>
void remask_impl(const RemaskParams& p) {
  const int64_t B = p.batch, Lb = p.block_len;
  std::vector<Choice> choice(size_t(B * Lb), Choice{-1, kNegInf});
  bool non_finite = false;

#pragma omp parallel if (worth_parallel(B * Lb * p.vocab))
  {
    std::vector<float> l(size_t(p.vocab));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < Lb; ++i) {
        const int64_t* row_tokens = p.tokens + b * p.tokens_sb;
        if (row_tokens[p.block_start + i] != p.mask_id) continue;
        const int64_t off = b * p.logits_sb + i * p.logits_sl;
        const T* cond = static_cast<const T*>(p.logits) + off;
        const T* un = p.uncond ? static_cast<const T*>(p.uncond) + off : nullptr;
        const int64_t position = p.block_start + i - p.row_offset[b];
        Choice ch = choose_row<T>(p, cond, un, l, b, position);
        if (!std::isfinite(ch.conf)) {
#pragma omp atomic write
          non_finite = true;
          ch.conf = kNegInf;
        }
        choice[size_t(b * Lb + i)] = ch;
      }
    }
  }

  if (non_finite) throw KernelError("remask: logits contain NaN or infinity (the model produced non-finite values)");

  // Phase 2: per sequence, order masked rows by (confidence desc, position asc) and transfer.
  std::vector<int64_t> order;
  for (int64_t b = 0; b < B; ++b) {
    const Choice* c = choice.data() + b * Lb;
    int64_t* row_tokens = p.tokens + b * p.tokens_sb + p.block_start;
    order.clear();
    for (int64_t i = 0; i < Lb; ++i)
      if (c[i].token >= 0) order.push_back(i);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t z) { return c[a].conf > c[z].conf; });
    int64_t take = 0;
    if (p.k) {
      take = std::min<int64_t>(std::max<int64_t>(p.k[b], 0), int64_t(order.size()));
    } else {
      while (take < int64_t(order.size()) && (take == 0 || c[order[size_t(take)]].conf >= p.threshold)) ++take;
    }
    for (int64_t t = 0; t < take; ++t) row_tokens[order[size_t(t)]] = c[order[size_t(t)]].token;
    if (p.x0 || p.conf) {
      for (int64_t i = 0; i < Lb; ++i) {
        if (p.x0) p.x0[b * Lb + i] = c[i].token;
        if (p.conf) p.conf[b * Lb + i] = c[i].conf;
      }
    }
    if (p.masks_left) p.masks_left[b] = int64_t(order.size()) - take;
  }
}

}  // namespace

void remask_cpu(const RemaskParams& p) {
  ILLADA_DISPATCH_FLOAT(p.logits_dtype, T, [&] { remask_impl<T>(p); });
}

}  // namespace illada
