"""Plain-torch twins of the compiled op families: the same signatures, contracts and arithmetic as
illada_rt.ops' compiled ops, on any device torch runs on (a GPU outside the build's architectures,
an extension built without nvcc). kernels.py chooses, per family, which of the two runs.
"""
from .attention import attention
from .elementwise import embedding, rmsnorm, rope_, swiglu
from .quant import (cast_to_fp8, dequantize_int4, dequantize_int8, fp8_linear, int4_linear, int8_linear,
                    quantize_fp8_per_token, rmsnorm_quant_fp8)
from .remask import remask_

__all__ = ["attention", "embedding", "rmsnorm", "rope_", "swiglu", "cast_to_fp8", "dequantize_int4",
           "dequantize_int8", "fp8_linear", "int4_linear", "int8_linear", "quantize_fp8_per_token",
           "rmsnorm_quant_fp8", "remask_"]
