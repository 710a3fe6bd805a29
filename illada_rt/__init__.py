"""illada_rt: a compiled inference runtime for masked-diffusion language models (LLaDA, iLLaDA)."""
from .config import DEMO_MODEL_DIR, ConfigError, ModelConfig
from .engine import Engine, GenerationOutput
from .loading import CheckpointError, quantize
from .ops import build_info
from .serving import AsyncEngine, SyncEngine
from .text import NoTokenizerError

__all__ = ["Engine", "GenerationOutput", "ModelConfig", "ConfigError", "CheckpointError", "NoTokenizerError",
           "build_info", "quantize", "DEMO_MODEL_DIR", "AsyncEngine", "SyncEngine"]
__version__ = "0.1.0"
