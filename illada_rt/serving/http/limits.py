"""What one request may cost, checked before any work starts.

Each limit is a flag of `illada-rt serve` (its name with dashes); a request over one is
answered 400 with the limit and its flag named, before anything is tokenized or queued
where the request's own numbers already tell (prompt count, gen_length, steps, token-id
prompts), and right after tokenization (off the event loop) for text prompts.

    max_prompts_per_request   prompts (choices) in one request
    max_gen_length            answer tokens one prompt may ask for (gen_length, or max_tokens rounded up)
    max_steps                 denoising steps (forwards) of one prompt or infill
    max_prompt_tokens         tokens of one prompt, or of an infill text
    max_request_tokens        over all prompts of a request: prompt tokens + gen_length
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence


class LimitError(ValueError):
    """The request asks for more than a server limit allows (400)."""


def flag(name: str) -> str:
    """The serve flag of a limit: max_steps -> --max-steps."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class RequestLimits:
    max_prompts_per_request: int = 16
    max_gen_length: int = 1024
    max_steps: int = 1024
    max_prompt_tokens: int = 4096
    max_request_tokens: int = 16384

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{flag(f.name)} must be a positive integer, got {value!r}")

    def check(self, name: str, value: int, what: str):
        """LimitError when value exceeds the limit `name`; `what` says what was counted."""
        limit = getattr(self, name)
        if value > limit:
            raise LimitError(f"{what} is {value}, over this server's limit of {limit} ({flag(name)})")

    def check_prompts(self, prompt_lengths: Sequence[int], gen_length: int):
        """Token counts of a request's prompts (gen_length answer tokens each, 0 for an infill)."""
        for i, n in enumerate(prompt_lengths):
            self.check("max_prompt_tokens", n, f"prompt {i}'s token count" if len(prompt_lengths) > 1
                       else "the prompt's token count")
        self.check("max_request_tokens", sum(prompt_lengths) + gen_length * len(prompt_lengths),
                   "the request's tokens (prompts + gen_length per prompt)")
