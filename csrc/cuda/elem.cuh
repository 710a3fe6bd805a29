// Device element types: load as float, store rounded to nearest even.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "dtype.h"

namespace illada {

__device__ __forceinline__ float dev_to_float(float v) { return v; }
__device__ __forceinline__ float dev_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float dev_to_float(__half v) { return __half2float(v); }

template <class T> __device__ __forceinline__ T dev_from_float(float v);
template <> __device__ __forceinline__ float dev_from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 dev_from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half dev_from_float<__half>(float v) { return __float2half_rn(v); }

}  // namespace illada

// ILLADA_DISPATCH_DEVICE_FLOAT(dtype, T, body-lambda): T the device element type.
#define ILLADA_DISPATCH_DEVICE_FLOAT(dtype, T, ...)                                      \
  [&] {                                                                                 \
    switch (dtype) {                                                                    \
      case ::illada::DType::Float32: { using T = float; return __VA_ARGS__(); }          \
      case ::illada::DType::BFloat16: { using T = __nv_bfloat16; return __VA_ARGS__(); } \
      case ::illada::DType::Float16: { using T = __half; return __VA_ARGS__(); }         \
      default: ILLADA_CHECK(false, "unsupported dtype " << ::illada::dtype_name(dtype));  \
    }                                                                                   \
  }()
