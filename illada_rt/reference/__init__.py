"""Plain-PyTorch LLaDA model and generators: the executable specification and test oracle.

    model.py     ReferenceModel: the public LLaDA forward from a state dict (rms_norm, rotary,
                 attention, block_forward, block_forward_kv)
    generate.py  the public LLaDA generate() with Fast-dLLM's threshold rule and early stop,
                 generate_with_cache (prefix / dual), LLaDA's transfer schedule (transfer_counts)
    tasks.py     infilling and likelihood references

Written to be read, not to be fast. Nothing here imports the runtime's decoding or kernels:
only the config and the counter-based random numbers (illada_rt.rng) are shared.
"""
from . import tasks
from .generate import (choose_tokens, generate, generate_with_cache, select_transfer, token_positions,
                       transfer_counts, transfer_step)
from .model import ReferenceModel, attention, block_forward, block_forward_kv, rms_norm, rotary

__all__ = ["ReferenceModel", "attention", "block_forward", "block_forward_kv", "rms_norm", "rotary", "choose_tokens",
           "generate", "generate_with_cache", "select_transfer", "token_positions", "transfer_counts",
           "transfer_step", "tasks"]
