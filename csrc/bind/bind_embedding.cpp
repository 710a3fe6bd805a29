// Binding for the embedding gather (CPU and CUDA).
#include "embedding.h"
#include "tensor_arg.h"

namespace py = pybind11;

namespace illada {

static void embedding(const TensorArg& out, const TensorArg& tokens, const TensorArg& table, uintptr_t stream) {
  expect(table, "table", 2, table.dtype);
  ILLADA_CHECK(is_floating(table.dtype), "embedding: table must be float32, bfloat16 or float16");
  expect(tokens, "tokens", 1, DType::Int64);
  expect(out, "out", 2, table.dtype);
  expect_shape(out, "out", {tokens.size(0), table.size(1)});
  expect_last_contiguous(table, "table");
  expect_last_contiguous(out, "out");
  expect_same_device(tokens, table, "tokens", "table");
  expect_same_device(out, table, "out", "table");
  EmbeddingParams p;
  p.out = out.data(); p.tokens = static_cast<const int64_t*>(tokens.data()); p.table = table.data();
  p.rows = tokens.size(0); p.dim = table.size(1); p.vocab = table.size(0);
  p.out_stride = out.stride(0); p.tokens_stride = tokens.stride(0); p.table_stride = table.stride(0);
  p.dtype = table.dtype;
  if (table.cuda) {
#ifdef ILLADA_WITH_CUDA
    embedding_cuda(p, reinterpret_cast<void*>(stream));
#else
    ILLADA_CHECK(false, "embedding: this build of illada_rt has no CUDA kernels");
#endif
  } else {
    py::gil_scoped_release nogil;
    embedding_cpu(p);
  }
}

void register_embedding(py::module_& m) {
  m.def("embedding", &embedding, py::arg("out"), py::arg("tokens"), py::arg("table"), py::arg("stream") = 0,
        "out[r] = table[tokens[r]] (CPU: tokens outside the table raise; CUDA: such rows become NaN).");
}

}  // namespace illada
