// TensorArg: what Python passes for a tensor (pointer, dtype, shape, strides, device),
// and the argument checks every binding shares. No torch on this side of the boundary.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "check.h"
#include "dtype.h"

namespace illada {

struct TensorArg {
  uintptr_t ptr = 0;
  DType dtype = DType::Float32;
  std::vector<int64_t> shape, strides;  // strides in elements
  bool cuda = false;

  int64_t dim() const { return int64_t(shape.size()); }
  int64_t size(int64_t i) const { return shape[size_t(i < 0 ? i + dim() : i)]; }
  int64_t stride(int64_t i) const { return strides[size_t(i < 0 ? i + dim() : i)]; }
  void* data() const { return reinterpret_cast<void*>(ptr); }
};

// name must have `ndim` dims and element type `dtype`.
inline void expect(const TensorArg& t, const char* name, int64_t ndim, DType dtype) {
  ILLADA_CHECK(t.dim() == ndim, name << " must have " << ndim << " dims, got " << t.dim());
  ILLADA_CHECK(t.dtype == dtype, name << " must be " << dtype_name(dtype) << ", got " << dtype_name(t.dtype));
  ILLADA_CHECK(t.ptr != 0 || [&] { int64_t n = 1; for (auto s : t.shape) n *= s; return n == 0; }(),
               name << " has a null data pointer");
}

inline void expect_last_contiguous(const TensorArg& t, const char* name) {
  ILLADA_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, name << " must be contiguous in its last dim");
}

inline void expect_shape(const TensorArg& t, const char* name, const std::vector<int64_t>& shape) {
  ILLADA_CHECK(t.shape == shape, name << " has the wrong shape");
}

inline void expect_same_device(const TensorArg& a, const TensorArg& b, const char* an, const char* bn) {
  ILLADA_CHECK(a.cuda == b.cuda, an << " and " << bn << " must be on the same device");
}

// name is a [rows, cols] matrix like x (its dtype and device) with contiguous rows: the fused
// residual of the norms, say.
inline void expect_rows_like(const TensorArg& t, const char* name, const TensorArg& x, int64_t rows, int64_t cols) {
  expect(t, name, 2, x.dtype);
  expect_shape(t, name, {rows, cols});
  expect_last_contiguous(t, name);
  expect_same_device(t, x, name, "x");
}

void register_norm(pybind11::module_& m);
void register_elementwise(pybind11::module_& m);
void register_attention(pybind11::module_& m);
void register_remask(pybind11::module_& m);
void register_embedding(pybind11::module_& m);
void register_quant(pybind11::module_& m);

}  // namespace illada
