// out[r, :] = table[tokens[r], :]: tokens checked first, then rows copied (OpenMP over rows).
#include "embedding.h"
#include "parallel.h"

#include <cstring>

namespace illada {

void embedding_cpu(const EmbeddingParams& p) {
  ILLADA_CHECK(is_floating(p.dtype), "embedding: table must be float32, bfloat16 or float16");
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t t = p.tokens[r * p.tokens_stride];
    ILLADA_CHECK(t >= 0 && t < p.vocab, "embedding: token " << t << " at index " << r << " outside [0, " << p.vocab << ")");
  }
  const size_t elem = p.dtype == DType::Float32 ? 4 : 2;
  const char* table = static_cast<const char*>(p.table);
  char* out = static_cast<char*>(p.out);
#pragma omp parallel for schedule(static) if (worth_parallel(p.rows * p.dim))
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t t = p.tokens[r * p.tokens_stride];
    std::memcpy(out + size_t(r * p.out_stride) * elem, table + size_t(t * p.table_stride) * elem, size_t(p.dim) * elem);
  }
}

}  // namespace illada
