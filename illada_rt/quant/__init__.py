"""Weight quantization: formats, load-time quantization, quantized checkpoints."""
from .formats import FORMATS, QuantizedWeight, dequantize, quantize_weight, reference_linear

__all__ = ["FORMATS", "QuantizedWeight", "dequantize", "quantize_weight", "reference_linear"]
