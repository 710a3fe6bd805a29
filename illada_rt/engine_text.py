"""The Engine's text API: the checkpoint's tokenizer and chat template around the token API.

Engine mixes this in; it relies on the token methods (generate, infill), cfg and model_dir.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

import torch

from .decoding import infill as infill_mod
from .decoding.loop import answer_lengths
from .text import NoTokenizerError, TextCodec


class TextAPI:
    @property
    def codec(self) -> TextCodec:
        if self._codec is None:
            self._codec = TextCodec(self.model_dir)
        return self._codec

    def answer_decoder(self, stops: List[int]) -> Optional[Callable[[torch.Tensor], List[str]]]:
        """answers [B, n] -> their texts up to the first stop token; None without a tokenizer."""
        try:
            codec = None if self.model_dir is None else self.codec
        except NoTokenizerError:
            codec = None
        if codec is None:
            return None

        def decode(answers: torch.Tensor) -> List[str]:
            lengths = answer_lengths(answers, stops)
            return [codec.decode(answers[b, : int(lengths[b])].tolist()) for b in range(answers.shape[0])]
        return decode

    def encode_prompts(self, prompts: Sequence[str], chat: bool = False):
        """Token ids [B, P] left-padded with the pad (or eos) id, and the attention mask."""
        codec = self.codec
        rows = []
        for text in prompts:
            if chat:
                rows.append(codec.encode(codec.render_chat([{"role": "user", "content": text}]), add_special_tokens=False))
            else:
                rows.append(codec.encode(text))
        if any(len(r) == 0 for r in rows):
            raise ValueError("a prompt encodes to no tokens; give non-empty text")
        pad = self.cfg.pad_token_id if self.cfg.pad_token_id is not None else self.cfg.eos_token_id
        width = max(len(r) for r in rows)
        if pad is None and any(len(r) != width for r in rows):
            raise ValueError("prompts of different lengths need a pad_token_id or eos_token_id in config.json")
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.int64)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.int64)
        return ids, mask

    def generate_text(self, prompts: Union[str, Sequence[str]], chat: bool = False, **kwargs) -> Union[str, List[str]]:
        """Generate from text prompts; returns the decoded answers (a str for a str prompt)."""
        single = isinstance(prompts, str)
        batch = [prompts] if single else list(prompts)
        if not batch:
            raise ValueError("prompts is empty")
        ids, mask = self.encode_prompts(batch, chat=chat)
        out = self.generate(ids, attention_mask=mask if bool((mask == 0).any()) else None, **kwargs)
        texts = [self.codec.decode(out.answers[b, : int(out.answer_lengths[b])].tolist()) for b in range(len(batch))]
        return texts[0] if single else texts

    def infill_text(self, texts: Union[str, Sequence[str]], mask_marker: Optional[str] = None,
                    **kwargs) -> Union[str, List[str]]:
        """Fill the masks of text ("The <mask> is <mask><mask> blue"): one masked token per
        marker (default: the tokenizer's mask token). Returns the decoded filled texts;
        kwargs are infill()'s."""
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if not batch:
            raise ValueError("texts is empty")
        pad = self.cfg.pad_token_id if self.cfg.pad_token_id is not None else self.cfg.eos_token_id
        ids, mask = infill_mod.encode_masked_texts(self.codec, batch, self.cfg.mask_token_id, mask_marker, pad)
        out = self.infill(ids, attention_mask=mask, **kwargs)
        pads = [0] * len(batch) if mask is None else (mask == 0).sum(1).tolist()
        filled = [self.codec.decode(out.sequences[b, pads[b]:].tolist()) for b in range(len(batch))]
        return filled[0] if single else filled
