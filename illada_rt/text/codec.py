"""Text in and out: a Hugging Face tokenizer.json through the `tokenizers` package, and
chat templates from tokenizer_config.json rendered with a sandboxed jinja2."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


class NoTokenizerError(ValueError):
    """The text API was used with a checkpoint that ships no tokenizer.json."""


def _token_text(value) -> Optional[str]:
    # tokenizer_config.json stores special tokens as strings or as {"content": ...} objects.
    if isinstance(value, dict):
        return value.get("content")
    return value


class TextCodec:
    def __init__(self, model_dir: str):
        from tokenizers import Tokenizer

        path = os.path.join(model_dir, TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise NoTokenizerError(f"{model_dir}: no {TOKENIZER_FILE}; use the token-id API "
                                   "(Engine.generate) or add a Hugging Face tokenizer.json")
        try:
            self.tokenizer = Tokenizer.from_file(path)
        except Exception as e:
            raise ValueError(f"{path}: cannot load tokenizer ({e})") from None
        self.config: Dict = {}
        cfg_path = os.path.join(model_dir, TOKENIZER_CONFIG)
        if os.path.isfile(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                self.config = json.load(f)
        self.chat_template: Optional[str] = self.config.get("chat_template")

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_id(self, text: str) -> Optional[int]:
        return self.tokenizer.token_to_id(text)

    def render_chat(self, messages: List[Dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise ValueError(f"this checkpoint's {TOKENIZER_CONFIG} has no chat_template; use chat=False")
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        template = env.from_string(self.chat_template)
        special = {k: _token_text(self.config.get(k)) or "" for k in ("bos_token", "eos_token", "pad_token")}
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **special)
