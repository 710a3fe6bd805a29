// ILLADA_CUDA_CHECK(call, what): turn a CUDA runtime error into an illada::KernelError naming
// the kernel; used after every runtime call and every launch.
#pragma once
#include <cuda_runtime.h>

#include <sstream>

#include "check.h"

#define ILLADA_CUDA_CHECK(call, what)                                                   \
  do {                                                                                  \
    cudaError_t illada_err_ = (call);                                                   \
    if (illada_err_ != cudaSuccess) {                                                   \
      std::ostringstream illada_msg_;                                                   \
      illada_msg_ << what << ": " << cudaGetErrorString(illada_err_);                   \
      ::illada::raise_at<::illada::KernelError>(__FILE__, __LINE__, illada_msg_.str()); \
    }                                                                                   \
  } while (0)

#define ILLADA_CUDA_LAUNCH_CHECK(what) ILLADA_CUDA_CHECK(cudaGetLastError(), what)
