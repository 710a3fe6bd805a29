// Binding for rmsnorm (CPU and CUDA).
#include "rmsnorm.h"
#include "tensor_arg.h"

namespace py = pybind11;

namespace illada {

static void rmsnorm(const TensorArg& out, const TensorArg& x, const TensorArg& weight,
                    const TensorArg* residual, float eps, uintptr_t stream) {
  expect(x, "x", 2, x.dtype);
  ILLADA_CHECK(is_floating(x.dtype), "rmsnorm: x must be float32, bfloat16 or float16");
  expect(out, "out", 2, x.dtype);
  expect(weight, "weight", 1, x.dtype);
  const int64_t rows = x.size(0), dim = x.size(1);
  expect_shape(out, "out", {rows, dim});
  expect_shape(weight, "weight", {dim});
  for (const TensorArg* t : {&out, &x, &weight}) expect_last_contiguous(*t, "rmsnorm operand");
  expect_same_device(out, x, "out", "x");
  expect_same_device(weight, x, "weight", "x");

  RmsNormParams p;
  p.out = out.data(); p.x = x.data(); p.weight = weight.data();
  p.rows = rows; p.dim = dim;
  p.out_stride = out.stride(0); p.x_stride = x.stride(0);
  p.eps = eps; p.dtype = x.dtype;
  if (residual) {
    expect_rows_like(*residual, "residual", x, rows, dim);
    p.residual = residual->data();
    p.residual_stride = residual->stride(0);
  }
  if (x.cuda) {
#ifdef ILLADA_WITH_CUDA
    rmsnorm_cuda(p, reinterpret_cast<void*>(stream));
#else
    ILLADA_CHECK(false, "rmsnorm: this build of illada_rt has no CUDA kernels");
#endif
  } else {
    py::gil_scoped_release nogil;
    rmsnorm_cpu(p);
  }
}

void register_norm(py::module_& m) {
  m.def("rmsnorm", &rmsnorm, py::arg("out"), py::arg("x"), py::arg("weight"), py::arg("residual"),
        py::arg("eps"), py::arg("stream") = 0,
        "out = weight * rmsnorm(x) (x += residual first when residual is given: residual <- residual + x).");
}

}  // namespace illada
