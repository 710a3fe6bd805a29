"""illada_rt: a compiled inference runtime for masked-diffusion language models (LLaDA, iLLaDA).

The names below load on first use (PEP 562): `import illada_rt` itself imports neither torch nor
the extension, so a command line that starts with it (illada-rt, python -m illada_rt) is inside
its own error handling before anything heavy runs, and a Ctrl-C while torch loads is one line.
"""
import importlib

from .config import DEMO_MODEL_DIR, ConfigError, ModelConfig

_LAZY = {"Engine": "engine", "GenerationOutput": "engine", "CheckpointError": "loading", "quantize": "loading",
         "build_info": "ops", "AsyncEngine": "serving", "SyncEngine": "serving", "NoTokenizerError": "text"}

__all__ = ["Engine", "GenerationOutput", "ModelConfig", "ConfigError", "CheckpointError", "NoTokenizerError",
           "build_info", "quantize", "DEMO_MODEL_DIR", "AsyncEngine", "SyncEngine"]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value            # later lookups skip this function
        return value
    raise AttributeError(f"module 'illada_rt' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
