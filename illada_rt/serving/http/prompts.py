"""A request's texts -> token ids, in worker threads (the event loop stays free), checked against
the server's limits as soon as the tokens are counted.

At most TOKENIZER_THREADS texts are tokenized at once, so a burst of large text prompts
queues here instead of taking every core and the memory of all of them at once. A thread
only helps if it lets go of the GIL: tokenizers' Tokenizer.encode keeps it for the whole call
(about 0.5 s for a megabyte of text, during which the event loop stands still), encode_batch
lets go of it, so texts are encoded through encode_batch (_encode).
"""
from __future__ import annotations

import asyncio
from typing import List

import anyio
import torch

from ...text import NoTokenizerError
from ..protocol import ServingEngine
from .limits import RequestLimits
from .schema import GenerationParams

TOKENIZER_THREADS = 2


class PromptEncoder:
    def __init__(self, engine: ServingEngine, model_name: str, limits: RequestLimits):
        self.engine, self.model_name, self.limits = engine, model_name, limits
        self._threads = None   # (event loop, anyio.CapacityLimiter): made on the loop that uses it

    @property
    def codec(self):
        """The checkpoint's TextCodec, or None when it ships no tokenizer (token-id prompts only)."""
        try:
            return self.engine.text.codec
        except NoTokenizerError:
            return None

    def text_codec(self):
        codec = self.codec
        if codec is None:
            raise ValueError(f"model {self.model_name!r} has no tokenizer; send token-id prompts")
        return codec

    async def encode(self, params: GenerationParams) -> List[List[int]]:
        """Every prompt as token ids (texts tokenized), each and all checked against the limits."""
        return await self._off_loop(self._prompts, params)

    async def encode_chat(self, messages: List[dict], params: GenerationParams) -> List[int]:
        """The messages through the chat template, tokenized; a template's refusal is a ValueError (400)."""
        return await self._off_loop(self._chat, messages, params)

    async def encode_infill(self, params: GenerationParams) -> torch.Tensor:
        """The masked text's ids [L] (one mask id per marker), checked against the limits."""
        return await self._off_loop(self._infill, params)

    # ------------------------------------------------------------ in a worker thread

    async def _off_loop(self, fn, *args):
        loop = asyncio.get_running_loop()
        if self._threads is None or self._threads[0] is not loop:
            self._threads = (loop, anyio.CapacityLimiter(TOKENIZER_THREADS))
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._threads[1])

    def _prompts(self, params: GenerationParams) -> List[List[int]]:
        prompts = []
        for prompt in params.prompts:
            if isinstance(prompt, str):
                prompt = _encode(self.text_codec(), prompt)
                if not prompt:
                    raise ValueError("the prompt encodes to no tokens; give non-empty text")
            prompts.append(prompt)
        self.limits.check_prompts([len(p) for p in prompts], params.options["gen_length"])
        return prompts

    def _chat(self, messages: List[dict], params: GenerationParams) -> List[int]:
        from jinja2.exceptions import TemplateError

        codec = self.text_codec()
        if not codec.chat_template:
            raise ValueError(f"model {self.model_name!r} has no chat template (tokenizer_config.json "
                             "chat_template); use /v1/completions")
        try:
            text = codec.render_chat(messages)
        except TemplateError as e:
            if type(e) is not TemplateError:   # raise_exception() in the template; its other errors are bugs
                raise
            raise ValueError(f"the chat template refused the messages: {e}") from None
        ids = _encode(codec, text, add_special_tokens=False)
        self.limits.check_prompts([len(ids)], params.options["gen_length"])
        return ids

    def _infill(self, params: GenerationParams) -> torch.Tensor:
        self.text_codec()
        ids = self.engine.text.encode_masked_texts([params.infill], params.mask_marker)[0][0]
        self.limits.check_prompts([ids.shape[0]], 0)
        if params.options["steps"] is None:   # plan_infill's default: one step per mask of the largest block
            masks, block = int((ids == self.engine.cfg.mask_token_id).sum()), params.options["block_length"]
            steps = masks if block is None else -(-masks // block) * min(block, masks)
            self.limits.check("max_steps", steps, "'steps' (by default one per mask)")
        return ids


def _encode(codec, text: str, add_special_tokens: bool = True) -> List[int]:
    """codec.encode(text) without holding the GIL while the tokenizer works (see above)."""
    return codec.tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
