"""The model: the LLaDA forward on packed weights. It knows nothing about files (see loading/).

    llada.py     LLaDAModel: the forward (hidden, logits, the block KV cache's prefill / block_step)
    weights.py   LayerWeights; named tensors packed into them as they arrive; weight byte counts
    linear.py    the one matmul entry point: dense through torch, quantized through the kernels

The checkpoint's public parameter names and shapes are config.expected_shapes (loading checks
files against them, weights.py packs by them).
"""
from .llada import KVCache, LLaDAModel, RowSelect
from .weights import LayerWeights, pack_weights, weight_bytes

__all__ = ["KVCache", "LLaDAModel", "LayerWeights", "RowSelect", "pack_weights", "weight_bytes"]
