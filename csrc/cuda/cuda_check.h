// ILLADA_CUDA_CHECK(call, what): turn a CUDA runtime error into an illada::KernelError naming
// the kernel; used after every runtime call and every launch. When the build has no code for the
// GPU (no kernel image / invalid device function / PTX that does not JIT) the message names the
// GPU's architecture and the build's SASS and PTX targets (illada_rt.ops.targets.code_for says
// the same from Python before any launch).
#pragma once
#include <cuda_runtime.h>

#include <sstream>
#include <string>

#include "check.h"

#ifndef ILLADA_CUDA_SASS
#define ILLADA_CUDA_SASS ""
#endif
#ifndef ILLADA_CUDA_PTX
#define ILLADA_CUDA_PTX ""
#endif

namespace illada {

// "this GPU (device 0) is sm_75 (compute capability 7.5); this build ... has SASS for ... and PTX
// for ...; rebuild with ...". Only queries whose failure is handled here: the error path cannot
// raise a second, unrelated error.
inline std::string missing_arch_hint() {
  int device = 0, major = 0, minor = 0;
  const bool known = cudaGetDevice(&device) == cudaSuccess &&
                     cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
                     cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess;
  cudaGetLastError();  // a failed query must not surface in the next check
  const std::string sass = ILLADA_CUDA_SASS, ptx = ILLADA_CUDA_PTX;
  std::ostringstream s;
  if (known)
    s << "this GPU (device " << device << ") is sm_" << major << minor << " (compute capability " << major << "."
      << minor << ")";
  else
    s << "the current GPU's architecture could not be queried";
  s << "; this build of illada_rt._C has SASS for " << (sass.empty() ? "none" : sass) << " and PTX for "
    << (ptx.empty() ? "none" : ptx) << "; rebuild with ILLADA_CUDA_ARCHS=";
  if (known)
    s << major << minor;
  else
    s << "<this GPU's architecture>";
  s << " (pip install -e .) or use kernels='torch'";
  return s.str();
}

[[noreturn]] inline void raise_cuda_error(cudaError_t err, const std::string& what, const char* file, int line) {
  // Clear a non-sticky error (a failed runtime call also sets it) so the next launch check does
  // not report it a second time; sticky errors stay, as the runtime requires.
  cudaGetLastError();
  std::string msg = what + ": " + cudaGetErrorString(err);
  // No code for this GPU, or its PTX failed to JIT (e.g. a driver older than the nvcc that wrote it).
  if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction || err == cudaErrorInvalidPtx ||
      err == cudaErrorUnsupportedPtxVersion)
    msg += " (" + missing_arch_hint() + ")";
  raise_at<KernelError>(file, line, msg);
}

}  // namespace illada

#define ILLADA_CUDA_CHECK(call, what)                                                \
  do {                                                                               \
    cudaError_t illada_err_ = (call);                                                \
    if (illada_err_ != cudaSuccess) {                                                \
      std::ostringstream illada_msg_;                                                \
      illada_msg_ << what;                                                           \
      ::illada::raise_cuda_error(illada_err_, illada_msg_.str(), __FILE__, __LINE__); \
    }                                                                                \
  } while (0)

#define ILLADA_CUDA_LAUNCH_CHECK(what) ILLADA_CUDA_CHECK(cudaGetLastError(), what)
