// y[M, N] = x[M, K] @ w^T for int8 / int4 weights on the GPU (built for small M): checks the shape
// requirements of the tensor-core kernel (quant_mma.cuh) and launches it. The 8-bit
// instantiations live here, the 4-bit ones in quant_matmul_int4.cu.
#include <cstdint>

#include "quant_mma.cuh"

namespace illada {

void quant_matmul_int4_cuda(const QuantMatmulParams& p, cudaStream_t stream);

void quant_matmul_cuda(const QuantMatmulParams& p, void* stream) {
  const PackedWeight& w = p.w;
  ILLADA_CHECK(p.dtype == DType::BFloat16 || p.dtype == DType::Float16, "quant_matmul: x must be bfloat16 or float16");
  ILLADA_CHECK(p.m <= kQuantMatmulKernelMaxM, "quant_matmul: M = " << p.m << " exceeds " << kQuantMatmulKernelMaxM
                                              << " (dequantize and use a dense matmul for large M)");
  ILLADA_CHECK(w.k % quant_matmul_k_align(w.bits) == 0,
               "quant_matmul: K = " << w.k << " must be a multiple of " << quant_matmul_k_align(w.bits));
  ILLADA_CHECK(w.bits == 8 || w.group_size % 32 == 0,
               "quant_matmul: int4 group_size " << w.group_size << " must be a multiple of 32");
  ILLADA_CHECK(reinterpret_cast<uintptr_t>(w.qweight) % 16 == 0 && w.q_stride % 16 == 0,
               "quant_matmul: qweight rows must be 16-byte aligned");
  ILLADA_CHECK(reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && p.x_stride % 8 == 0,
               "quant_matmul: x rows must be 16-byte aligned");
  ILLADA_CHECK(w.n <= (int64_t(1) << 31) * quant_mma::kBlockRows, "quant_matmul: N too large for one launch");
  if (p.m == 0 || w.n == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  if (w.k == 0) {  // an empty sum: y = 0
    // one row may report any stride (torch does for a single row): pitch at least the row width
    const size_t pitch = p.m == 1 ? size_t(w.n) * 2 : size_t(p.y_stride) * 2;
    ILLADA_CUDA_CHECK(cudaMemset2DAsync(p.y, pitch, 0, size_t(w.n) * 2, size_t(p.m), s),
                      "quant_matmul: zeroing y");
    return;
  }
  if (w.bits == 8) quant_mma::launch<8>(p, s);
  else quant_matmul_int4_cuda(p, s);
}

}  // namespace illada
