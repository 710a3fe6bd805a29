// When the CPU kernels fork threads: only for work large enough to pay for waking them.
// Small launches run on the calling thread, so they never wait for cores that torch's
// own thread pool may still hold between its ops.
#pragma once
#include <cstdint>

namespace illada {

// Element-operations below which a CPU kernel stays single-threaded.
constexpr int64_t kParallelGrain = int64_t(1) << 18;

inline bool worth_parallel(int64_t work) { return work >= kParallelGrain; }

}  // namespace illada
