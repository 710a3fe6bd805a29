"""Text around an engine's token API: the checkpoint's tokenizer and chat template, prompts and
masked texts encoded into left-padded id batches, answers decoded up to their stop token.

An Engine holds one TextFrontend (engine.text) and its text methods (generate_text, infill_text,
encode_prompts, codec, answer_decoder) go through it.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..config import ModelConfig
from ..decoding.padding import left_pad, pad_id
from ..decoding.step import answer_lengths
from .codec import NoTokenizerError, TextCodec


class TextFrontend:
    def __init__(self, cfg: ModelConfig, model_dir: Optional[str]):
        self.cfg, self.model_dir = cfg, model_dir
        self._codec: Optional[TextCodec] = None   # loaded on first use

    @property
    def codec(self) -> TextCodec:
        """The checkpoint's tokenizer (NoTokenizerError where it ships none)."""
        if self._codec is None:
            if self.model_dir is None:
                raise NoTokenizerError("this engine was built from weights, not a checkpoint directory: "
                                       "it has no tokenizer; use the token-id API")
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

    def encode_prompts(self, prompts: Sequence[str], chat: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, P] left-padded (decoding/padding.py) and the attention mask [B, P] int64."""
        codec = self.codec
        rows = []
        for text in prompts:
            if chat:
                rows.append(codec.encode(codec.render_chat([{"role": "user", "content": text}]), add_special_tokens=False))
            else:
                rows.append(codec.encode(text))
        if any(len(r) == 0 for r in rows):
            raise ValueError("a prompt encodes to no tokens; give non-empty text")
        ids, mask = left_pad(rows, pad_id(self.cfg))
        return ids, mask.to(torch.int64)

    def encode_masked_texts(self, texts: Sequence[str],
                            mask_marker: Optional[str] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Texts with mask markers -> left-padded ids [B, L] (one mask id per marker) and the
        attention mask [B, L] int64 (None without padding).

        The marker defaults to the tokenizer's own mask token string; a custom marker is
        replaced by that string before encoding, so the tokenizer sees its special token.
        """
        codec, mask_id = self.codec, self.cfg.mask_token_id
        mask_text = codec.tokenizer.id_to_token(mask_id)
        if mask_text is None:
            raise ValueError(f"the tokenizer has no token for the mask id {mask_id}")
        marker = mask_text if mask_marker is None else mask_marker
        if not marker:
            raise ValueError("mask_marker must be a non-empty string")
        rows = []
        for text in texts:
            ids = codec.encode(text.replace(marker, mask_text) if marker != mask_text else text)
            if ids.count(mask_id) != text.count(marker):
                raise ValueError(f"{text!r}: {text.count(marker)} mask markers {marker!r} encode to "
                                 f"{ids.count(mask_id)} mask tokens; the tokenizer must keep {mask_text!r} whole")
            rows.append(ids)
        ids, mask = left_pad(rows, pad_id(self.cfg))
        return ids, (mask.to(torch.int64) if not bool(mask.all()) else None)

    def decode(self, ids: torch.Tensor) -> str:
        """One row of token ids [n] -> text (special tokens dropped)."""
        return self.codec.decode(ids.tolist())
