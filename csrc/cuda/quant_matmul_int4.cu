// The 4-bit instantiations of the small-M quantized matmul (quant_mma.cuh); a file of their
// own so that nvcc compiles the two weight widths in parallel.
#include "quant_mma.cuh"

namespace illada {

void quant_matmul_int4_cuda(const QuantMatmulParams& p, cudaStream_t stream) { quant_mma::launch<4>(p, stream); }

}  // namespace illada
