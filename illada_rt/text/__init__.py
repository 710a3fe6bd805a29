"""Text in and out: the checkpoint's tokenizer and chat template (codec.py), and the engine's
text front end (frontend.py)."""
from .codec import NoTokenizerError, TextCodec
from .frontend import TextFrontend

__all__ = ["NoTokenizerError", "TextCodec", "TextFrontend"]
