// Binding for bidirectional GQA attention (CPU and CUDA).
#include <cmath>

#include "attention.h"
#include "tensor_arg.h"

namespace py = pybind11;

namespace illada {

static void attention(const TensorArg& out, const TensorArg& q, const TensorArg& k, const TensorArg& v,
                      const TensorArg* key_mask, float scale, uintptr_t stream) {
  ILLADA_CHECK(is_floating(q.dtype), "attention: q must be float32, bfloat16 or float16");
  const char* names[] = {"out", "q", "k", "v"};
  const TensorArg* ts[] = {&out, &q, &k, &v};
  for (int i = 0; i < 4; ++i) {
    expect(*ts[i], names[i], 4, q.dtype);
    expect_last_contiguous(*ts[i], names[i]);
    expect_same_device(*ts[i], q, names[i], "q");
  }
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3);
  const int64_t Lk = k.size(1), Hkv = k.size(2);
  expect_shape(out, "out", q.shape);
  expect_shape(k, "k", {B, Lk, Hkv, D});
  expect_shape(v, "v", {B, Lk, Hkv, D});
  ILLADA_CHECK(Hkv > 0 && H % Hkv == 0, "attention: heads " << H << " not divisible by kv heads " << Hkv);

  AttentionParams p;
  p.q = q.data(); p.k = k.data(); p.v = v.data(); p.out = out.data();
  p.batch = B; p.seq_q = Lq; p.seq_k = Lk; p.heads = H; p.kv_heads = Hkv; p.head_dim = D;
  p.q_sb = q.stride(0); p.q_sl = q.stride(1); p.q_sh = q.stride(2);
  p.k_sb = k.stride(0); p.k_sl = k.stride(1); p.k_sh = k.stride(2);
  p.v_sb = v.stride(0); p.v_sl = v.stride(1); p.v_sh = v.stride(2);
  p.o_sb = out.stride(0); p.o_sl = out.stride(1); p.o_sh = out.stride(2);
  p.scale = std::isnan(scale) ? 1.0f / std::sqrt(float(D)) : scale;
  p.dtype = q.dtype;
  if (key_mask) {
    expect(*key_mask, "key_mask", 2, DType::Bool);
    expect_same_device(*key_mask, q, "key_mask", "q");
    expect_shape(*key_mask, "key_mask", {B, Lk});
    ILLADA_CHECK(key_mask->stride(1) == 1, "key_mask must be contiguous in its last dim");
    p.key_mask = static_cast<const uint8_t*>(key_mask->data());
    p.mask_stride = key_mask->stride(0);
  }
  if (q.cuda) {
#ifdef ILLADA_WITH_CUDA
    attention_cuda(p, reinterpret_cast<void*>(stream));
#else
    ILLADA_CHECK(false, "attention: this build of illada_rt has no CUDA kernels");
#endif
  } else {
    py::gil_scoped_release nogil;
    attention_cpu(p);
  }
}

void register_attention(py::module_& m) {
  m.def("attention", &attention, py::arg("out"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("key_mask"), py::arg("scale") = NAN, py::arg("stream") = 0,
        "Bidirectional attention: q [B, Lq, H, D], k/v [B, Lk, Hkv, D], key_mask [B, Lk] bool or None.");
}

}  // namespace illada
