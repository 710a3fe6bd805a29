"""Weight quantization: formats, load-time quantization, quantized checkpoints.

    formats.py     the int8 / int4 / fp8 formats: quantize, dequantize, the reference matmul
    linear.py      the model's matmul entry point (kernel where built, reference otherwise)
    spec.py        QuantSpec, which tensors are quantized, checks before loading
    load.py        quantize at load, tensor by tensor; weight byte counts
    checkpoint.py  write (illada_rt.quantize) and read quantized checkpoints
    gptq.py        4-bit GPTQ checkpoints read as int4
(load, checkpoint and gptq build on illada_rt.model and are imported by name, not from here.)
"""
from .formats import FORMATS, QuantizedWeight, dequantize, quantize_weight, reference_linear
from .linear import quantized_linear
from .spec import QuantSpec

__all__ = ["FORMATS", "QuantizedWeight", "QuantSpec", "dequantize", "quantize_weight", "quantized_linear",
           "reference_linear"]
