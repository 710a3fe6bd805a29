"""Loading: a checkpoint directory -> named tensors -> LLaDAModel, and the writer of quantized checkpoints.

    errors.py            CheckpointError
    safetensors.py       the one safetensors reader: weight files (single or sharded), TensorReader
    checkpoint.py        Checkpoint: config.json read once (ModelConfig, quantization section, GPTQ)
    dense.py             the stream of a bf16/fp32 checkpoint (iter_weights, load_state_dict)
    quantized.py         the stream of a quantized checkpoint, as stored (iter_quantized)
    quantize_at_load.py  dense stream in, quantized stream out (quantize_stream)
    gptq.py              the stream of a 4-bit GPTQ checkpoint, read as int4 (iter_gptq)
    load.py              load_model: checkpoint -> the right stream -> LLaDAModel.from_weights
    writer.py            quantize(): write a quantized checkpoint

Loading builds on model/, quant/ and config; none of them imports it.
"""
from .checkpoint import Checkpoint
from .dense import iter_weights, load_state_dict
from .errors import CheckpointError
from .load import load_model
from .safetensors import TensorReader, weight_files
from .writer import quantize

__all__ = ["Checkpoint", "CheckpointError", "TensorReader", "iter_weights", "load_model", "load_state_dict",
           "quantize", "weight_files"]
