// Philox4x32-10 counter-based generator (Salmon et al., SC'11), host and device.
// The counter layout shared by every kernel and by illada_rt/rng.py:
//   key = (seed lo, seed hi); counter = (c0, position, step, stream).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define ILLADA_HD __host__ __device__ __forceinline__
#else
#define ILLADA_HD inline
#endif

namespace illada {

enum RngStream : uint32_t { kGumbelStream = 0, kRandomRemaskStream = 1 };

struct Philox4 { uint32_t v[4]; };

ILLADA_HD Philox4 philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
    uint64_t p0 = uint64_t(0xD2511F53u) * c0;
    uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
    uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0);
    uint32_t hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// (x + 0.5) / 2^32: strictly inside (0, 1).
ILLADA_HD double philox_uniform(uint32_t x) { return (double(x) + 0.5) * (1.0 / 4294967296.0); }

}  // namespace illada
