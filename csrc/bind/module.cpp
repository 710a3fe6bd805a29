// The illada_rt._C extension: TensorArg, build information, and the kernel families.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sstream>
#include <string>
#include <vector>

#include "tensor_arg.h"

#ifdef ILLADA_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace py = pybind11;

#ifndef ILLADA_CUDA_ARCHS
#define ILLADA_CUDA_ARCHS ""
#endif
#ifndef ILLADA_CUDA_SASS
#define ILLADA_CUDA_SASS ""
#endif
#ifndef ILLADA_CUDA_PTX
#define ILLADA_CUDA_PTX ""
#endif
#ifndef ILLADA_NVCC_VERSION
#define ILLADA_NVCC_VERSION ""
#endif

namespace {

// "sm_80,sm_89,sm_90a" -> ["sm_80", "sm_89", "sm_90a"]; "" -> [].
std::vector<std::string> split_commas(const std::string& list) {
  std::vector<std::string> items;
  std::istringstream s(list);
  for (std::string item; std::getline(s, item, ',');)
    if (!item.empty()) items.push_back(item);
  return items;
}

py::dict build_info() {
  py::dict info;
#ifdef ILLADA_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = std::string(ILLADA_CUDA_ARCHS);
  info["nvcc_version"] = std::string(ILLADA_NVCC_VERSION);
  info["cuda_runtime_version"] = CUDART_VERSION;
  info["cuda_runtime"] = std::string("static");
#else
  info["cuda"] = false;
  info["cuda_archs"] = std::string();
  info["nvcc_version"] = std::string();
#endif
  // Machine code per GPU (sm_90a) and PTX the driver JIT-compiles (compute_90); [] without CUDA.
  info["cuda_sass"] = split_commas(ILLADA_CUDA_SASS);
  info["cuda_ptx"] = split_commas(ILLADA_CUDA_PTX);
#if defined(__clang__)
  info["cxx_compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["cxx_compiler"] = std::string("gcc ") + __VERSION__;
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["pybind11_version"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." + std::to_string(PYBIND11_VERSION_MINOR) +
                             "." + std::to_string(PYBIND11_VERSION_PATCH);
  return info;
}

// Number of CUDA devices the runtime can see, and why none when it sees none.
py::tuple cuda_devices() {
#ifdef ILLADA_WITH_CUDA
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error for later calls
    return py::make_tuple(0, std::string(cudaGetErrorString(err)));
  }
  return py::make_tuple(n, std::string());
#else
  return py::make_tuple(0, std::string("built without CUDA"));
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "illada_rt compiled kernels (CPU always, CUDA when built with nvcc)";
  py::class_<illada::TensorArg>(m, "TensorArg")
      .def(py::init([](uintptr_t ptr, int dtype, std::vector<int64_t> shape, std::vector<int64_t> strides, bool cuda) {
             ILLADA_CHECK(shape.size() == strides.size(), "TensorArg: shape and strides differ in length");
             ILLADA_CHECK(dtype >= 0 && dtype <= 9, "TensorArg: unknown dtype code " << dtype);
             return illada::TensorArg{ptr, illada::DType(dtype), std::move(shape), std::move(strides), cuda};
           }),
           py::arg("ptr"), py::arg("dtype"), py::arg("shape"), py::arg("strides"), py::arg("cuda"))
      .def_property_readonly("shape", [](const illada::TensorArg& t) { return t.shape; });
  m.def("build_info", &build_info, "What this extension was built with: CUDA, its SASS and PTX targets, compilers.");
  m.def("cuda_devices", &cuda_devices, "(count, reason): CUDA devices visible to the extension's runtime.");
  illada::register_norm(m);
  illada::register_elementwise(m);
  illada::register_attention(m);
  illada::register_remask(m);
  illada::register_embedding(m);
  illada::register_quant(m);
}
