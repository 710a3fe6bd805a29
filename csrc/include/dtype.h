// Element types that cross the Python boundary, and exact host conversions for the
// 16-bit ones (round to nearest even, as torch does) and for float8 e4m3 (host and device).
#pragma once
#include <cstdint>
#include <cstring>

#include "check.h"

namespace illada {

enum class DType : int { Float32 = 0, BFloat16 = 1, Float16 = 2, Int64 = 3, Int32 = 4, Bool = 5, Float64 = 6,
                         Int8 = 7, UInt8 = 8, Float8E4M3 = 9 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::BFloat16: return "bfloat16";
    case DType::Float16: return "float16";
    case DType::Int64: return "int64";
    case DType::Int32: return "int32";
    case DType::Bool: return "bool";
    case DType::Float64: return "float64";
    case DType::Int8: return "int8";
    case DType::UInt8: return "uint8";
    case DType::Float8E4M3: return "float8_e4m3fn";
  }
  return "unknown";
}

inline bool is_floating(DType t) {
  return t == DType::Float32 || t == DType::BFloat16 || t == DType::Float16;
}

inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline float bf16_to_float(uint16_t h) { return bits_float(uint32_t(h) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return uint16_t(u >> 16);
}

inline float fp16_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp == 0) {
    if (man == 0) return bits_float(sign);
    // subnormal: value = man * 2^-24
    float v = float(man) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112) << 23) | (man << 13));
}

inline uint16_t float_to_fp16(float f) {
  uint32_t u = float_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);               // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);              // overflow -> inf (>= 65520)
  if (a < 0x38800000u) {                                              // below the smallest normal 2^-14
    // subnormal or zero: scale to units of 2^-24 and round to nearest even
    float v = bits_float(a) * 16777216.0f;
    float r = __builtin_nearbyintf(v);  // default rounding mode: nearest even
    return uint16_t(sign | uint16_t(r));
  }
  uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);
  return uint16_t(sign | uint16_t((rounded - 0x38000000u) >> 13));
}

// float8 e4m3fn (1 sign, 4 exponent bits biased by 7, 3 mantissa bits; no infinities, the
// one NaN pattern S.1111.111; largest finite 448). The encoder rounds to nearest even and
// saturates: |f| >= 448 (infinities included) becomes +-448, NaN stays NaN with f's sign;
// subnormals (below 2^-6) are multiples of 2^-9. That is torch's `.to(torch.float8_e4m3fn)` of
// `f.clamp(-448, 448)` bit for bit; torch's plain cast saturates the same way only from 2.12 on
// (before, |f| >= 464 and infinities become NaN).
#if defined(__CUDACC__)
#define ILLADA_HOST_DEVICE __host__ __device__
#else
#define ILLADA_HOST_DEVICE
#endif

ILLADA_HOST_DEVICE inline uint32_t fp8_float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return float_bits(f);
#endif
}
ILLADA_HOST_DEVICE inline float fp8_bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return bits_float(u);
#endif
}

ILLADA_HOST_DEVICE inline uint8_t float_to_fp8e4m3(float f) {
  constexpr uint32_t kInf = 0x7f800000u;
  constexpr uint32_t kMax = 0x43e00000u;          // 448.0f, the largest finite e4m3
  constexpr uint32_t kSmallestNormal = 121u << 23;  // 2^-6
  constexpr uint32_t kDenormMagic = 141u << 23;   // 2^14: its float32 ulp is 2^-9, the subnormal step
  uint32_t u = fp8_float_bits(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint8_t out;
  if (u > kInf) {
    out = 0x7f;                                   // NaN
  } else if (u >= kMax) {
    out = 0x7e;                                   // saturate to 448
  } else if (u < kSmallestNormal) {
    // Adding 2^14 rounds |f| to a multiple of 2^-9 (nearest even); the low bits count the steps.
    out = uint8_t(fp8_float_bits(fp8_bits_float(u) + fp8_bits_float(kDenormMagic)) - kDenormMagic);
  } else {
    const uint32_t mant_odd = (u >> 20) & 1u;
    u += (uint32_t(7 - 127) << 23) + 0x7ffffu + mant_odd;  // rebias the exponent, round to nearest even
    out = uint8_t(u >> 20);
  }
  return uint8_t(out | (sign >> 24));
}

ILLADA_HOST_DEVICE inline float fp8e4m3_to_float(uint8_t b) {
  const uint32_t sign = uint32_t(b & 0x80u) << 24;
  const uint32_t exp = (b >> 3) & 0xfu, man = b & 7u;
  if (exp == 0xf && man == 7) return fp8_bits_float(sign | 0x7fc00000u);            // NaN
  if (exp == 0) return fp8_bits_float(sign | fp8_float_bits(float(man) * 0.001953125f));  // man * 2^-9
  return fp8_bits_float(sign | ((exp + 120u) << 23) | (man << 20));
}

// Host element types for templated CPU kernels: load as float, store rounded.
struct bf16_t { uint16_t bits; };
struct fp16_t { uint16_t bits; };

inline float to_float(float v) { return v; }
inline float to_float(bf16_t v) { return bf16_to_float(v.bits); }
inline float to_float(fp16_t v) { return fp16_to_float(v.bits); }

template <class T> inline T from_float(float v);
template <> inline float from_float<float>(float v) { return v; }
template <> inline bf16_t from_float<bf16_t>(float v) { return bf16_t{float_to_bf16(v)}; }
template <> inline fp16_t from_float<fp16_t>(float v) { return fp16_t{float_to_fp16(v)}; }

// Round a float to the precision of T (what torch does between two ops in T).
template <class T> inline float round_to(float v) { return to_float(from_float<T>(v)); }

}  // namespace illada

// ILLADA_DISPATCH_FLOAT(dtype, T, ...): run the body with T the host element type.
#define ILLADA_DISPATCH_FLOAT(dtype, T, ...)                                         \
  [&] {                                                                             \
    switch (dtype) {                                                                \
      case ::illada::DType::Float32: { using T = float; return __VA_ARGS__(); }      \
      case ::illada::DType::BFloat16: { using T = ::illada::bf16_t; return __VA_ARGS__(); } \
      case ::illada::DType::Float16: { using T = ::illada::fp16_t; return __VA_ARGS__(); }  \
      default: ILLADA_CHECK(false, "unsupported dtype " << ::illada::dtype_name(dtype)); \
    }                                                                               \
  }()
