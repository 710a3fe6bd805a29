"""illada_rt.ops: the op families the model runs, compiled and as torch twins.

extension.py imports the extension (the only module that touches ``_C``) and turns tensors into
TensorArgs; core.py holds the compiled model ops (norm, RoPE, SwiGLU, attention, embedding,
remask); quant.py the compiled quantized-weight ops; native/ the plain-torch twin of each;
kernels.py chooses, per family, which one a model runs (select_kernels, Kernels).
``ops.<name>`` is the compiled op; a model calls ``model.kernels.<name>``.
"""
from .core import (attention, build_info, cuda_devices, embedding, remask_, remask_workspace, rmsnorm, rope_,
                   rope_table, swiglu)
from .extension import FLOAT_DTYPES, _arg, _stream
from .kernels import CHOICES, ENV_VAR, FAMILIES, Kernels, custom_unavailable, parse_spec, select_kernels
from .quant import (INT_LINEAR_PATHS, QUANT_KERNEL_MAX_M, QUANT_MATMUL_MAX_M, cast_to_fp8, dequantize_int4, dequantize_int8, fp8_linear, fp8_matmul,
                    int4_linear, int8_linear, quantize_fp8_per_token, rmsnorm_quant_fp8)

__all__ = ["attention", "build_info", "cuda_devices", "embedding", "remask_", "remask_workspace", "rmsnorm", "rope_",
           "rope_table", "swiglu", "FLOAT_DTYPES", "INT_LINEAR_PATHS", "QUANT_KERNEL_MAX_M",
           "QUANT_MATMUL_MAX_M", "cast_to_fp8", "dequantize_int4",
           "dequantize_int8", "fp8_linear", "fp8_matmul", "int4_linear", "int8_linear", "quantize_fp8_per_token",
           "rmsnorm_quant_fp8", "_arg", "_stream", "CHOICES", "ENV_VAR", "FAMILIES", "Kernels",
           "custom_unavailable", "parse_spec", "select_kernels"]
