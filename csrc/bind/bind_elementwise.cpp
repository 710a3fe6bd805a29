// Bindings for the elementwise families: rope (in place) and swiglu (CPU and CUDA).
#include "rope.h"
#include "swiglu.h"
#include "tensor_arg.h"

namespace py = pybind11;

namespace illada {

static void rope(const TensorArg& x, const TensorArg& cos, const TensorArg& sin, int64_t position_start,
                 uintptr_t stream) {
  expect(x, "x", 4, x.dtype);
  ILLADA_CHECK(is_floating(x.dtype), "rope: x must be float32, bfloat16 or float16");
  expect_last_contiguous(x, "x");
  const int64_t half = x.size(3) / 2;
  ILLADA_CHECK(x.size(3) % 2 == 0, "rope: head_dim must be even, got " << x.size(3));
  for (const TensorArg* t : {&cos, &sin}) {
    expect(*t, "cos/sin table", 2, DType::Float32);
    expect_same_device(*t, x, "cos/sin table", "x");
    ILLADA_CHECK(t->size(1) == half && t->stride(1) == 1 && t->stride(0) == half,
                 "rope: cos/sin tables must be contiguous [positions, head_dim/2]");
  }
  expect_shape(sin, "sin", cos.shape);
  ILLADA_CHECK(position_start >= 0 && position_start + x.size(1) <= cos.size(0),
               "rope: positions " << position_start << ".." << position_start + x.size(1)
                                   << " exceed the table of " << cos.size(0));
  RopeParams p;
  p.x = x.data();
  p.batch = x.size(0); p.seq = x.size(1); p.heads = x.size(2); p.head_dim = x.size(3);
  p.stride_b = x.stride(0); p.stride_l = x.stride(1); p.stride_h = x.stride(2);
  p.cos = static_cast<const float*>(cos.data()); p.sin = static_cast<const float*>(sin.data());
  p.table_len = cos.size(0); p.position_start = position_start; p.dtype = x.dtype;
  if (x.cuda) {
#ifdef ILLADA_WITH_CUDA
    rope_cuda(p, reinterpret_cast<void*>(stream));
#else
    ILLADA_CHECK(false, "rope: this build of illada_rt has no CUDA kernels");
#endif
  } else {
    py::gil_scoped_release nogil;
    rope_cpu(p);
  }
}

static void swiglu(const TensorArg& out, const TensorArg& gate, const TensorArg& up, uintptr_t stream) {
  for (const TensorArg* t : {&out, &gate, &up}) {
    expect(*t, "swiglu operand", 2, gate.dtype);
    expect_last_contiguous(*t, "swiglu operand");
    expect_shape(*t, "swiglu operand", gate.shape);
    expect_same_device(*t, gate, "swiglu operand", "gate");
  }
  ILLADA_CHECK(is_floating(gate.dtype), "swiglu: inputs must be float32, bfloat16 or float16");
  SwigluParams p;
  p.out = out.data(); p.gate = gate.data(); p.up = up.data();
  p.rows = gate.size(0); p.cols = gate.size(1);
  p.out_stride = out.stride(0); p.gate_stride = gate.stride(0); p.up_stride = up.stride(0);
  p.dtype = gate.dtype;
  if (gate.cuda) {
#ifdef ILLADA_WITH_CUDA
    swiglu_cuda(p, reinterpret_cast<void*>(stream));
#else
    ILLADA_CHECK(false, "swiglu: this build of illada_rt has no CUDA kernels");
#endif
  } else {
    py::gil_scoped_release nogil;
    swiglu_cpu(p);
  }
}

void register_elementwise(py::module_& m) {
  m.def("rope", &rope, py::arg("x"), py::arg("cos"), py::arg("sin"), py::arg("position_start") = 0,
        py::arg("stream") = 0,
        "Rotate-half RoPE in place on x [B, L, H, head_dim] from cos/sin tables [positions, head_dim/2] "
        "(on x's device).");
  m.def("swiglu", &swiglu, py::arg("out"), py::arg("gate"), py::arg("up"), py::arg("stream") = 0,
        "out = silu(gate) * up, all [rows, cols].");
}

}  // namespace illada
