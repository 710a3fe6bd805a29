// out[i, :] = table[tokens[i], :]; ids outside the table raise (see embedding.h).
#include "embedding.h"
#include "parallel.h"

#include <cstring>

namespace illada {
namespace {

template <class T>
void gather_rows(const EmbeddingParams& p) {
  const T* table = static_cast<const T*>(p.table);
  T* out = static_cast<T*>(p.out);
#pragma omp parallel for schedule(static) if (worth_parallel(p.n * p.dim))
  for (int64_t i = 0; i < p.n; ++i) {
    std::memcpy(out + i * p.out_stride, table + p.tokens[i] * p.table_stride, size_t(p.dim) * sizeof(T));
  }
}

}  // namespace

void embedding_cpu(const EmbeddingParams& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    const int64_t id = p.tokens[i];
    ILLADA_CHECK(id >= 0 && id < p.vocab_rows,
                 "embedding: token id " << id << " at position " << i << " lies outside the table [0, "
                                        << p.vocab_rows << ")");
  }
  ILLADA_DISPATCH_FLOAT(p.dtype, T, [&] { gather_rows<T>(p); });
}

}  // namespace illada
