"""illada_rt.ops: the Python face of the compiled kernels; the only package that touches ``_C``.

extension.py imports the extension and turns tensors into TensorArgs; core.py holds the model's
ops (norm, RoPE, SwiGLU, attention, embedding, remask); quant.py the quantized-weight ops.
Callers use the names below as ``ops.<name>``.
"""
from .core import (attention, build_info, cuda_devices, embedding, remask_, remask_workspace, rmsnorm, rope_,
                   rope_table, swiglu)
from .extension import FLOAT_DTYPES, _arg, _stream
from .quant import (INT_LINEAR_PATHS, QUANT_KERNEL_MAX_M, QUANT_MATMUL_MAX_M, cast_to_fp8, dequantize_int4, dequantize_int8, fp8_linear, fp8_matmul,
                    int4_linear, int8_linear, quantize_fp8_per_token, rmsnorm_quant_fp8)

__all__ = ["attention", "build_info", "cuda_devices", "embedding", "remask_", "remask_workspace", "rmsnorm", "rope_",
           "rope_table", "swiglu", "FLOAT_DTYPES", "INT_LINEAR_PATHS", "QUANT_KERNEL_MAX_M",
           "QUANT_MATMUL_MAX_M", "cast_to_fp8", "dequantize_int4",
           "dequantize_int8", "fp8_linear", "fp8_matmul", "int4_linear", "int8_linear", "quantize_fp8_per_token",
           "rmsnorm_quant_fp8", "_arg", "_stream"]
