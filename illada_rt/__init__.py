"""illada_rt: a compiled inference runtime for masked-diffusion language models (LLaDA, iLLaDA)."""
import os

from .config import ConfigError, ModelConfig
from .engine import Engine, GenerationOutput
from .loading import CheckpointError, quantize
from .ops import build_info
from .serving import AsyncEngine, SyncEngine
from .text import NoTokenizerError

DEMO_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_model")

__all__ = ["Engine", "GenerationOutput", "ModelConfig", "ConfigError", "CheckpointError", "NoTokenizerError",
           "build_info", "quantize", "DEMO_MODEL_DIR", "AsyncEngine", "SyncEngine"]
__version__ = "0.1.0"
