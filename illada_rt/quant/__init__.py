"""Weight quantization formats: what a quantized weight is, not how it gets into memory.

    formats.py     the int8 / int4 / fp8 formats: quantize, dequantize, the reference matmul
    spec.py        QuantSpec, which tensors are quantized, checks before loading, byte estimates

The model's matmul on these weights is model/linear.py; quantizing a checkpoint while it loads,
reading and writing quantized checkpoints and reading GPTQ ones are in loading/.
"""
from .formats import FORMATS, QuantizedWeight, dequantize, quantize_weight, reference_linear
from .spec import QuantSpec

__all__ = ["FORMATS", "QuantizedWeight", "QuantSpec", "dequantize", "quantize_weight", "reference_linear"]
