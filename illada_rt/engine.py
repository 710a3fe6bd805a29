"""Engine: the public entry point. Loads a checkpoint directory and generates.

    eng = Engine.from_pretrained(model_dir, device="cpu", dtype="float32")
    logits = eng.logits(input_ids)                     # [B, L, V] float32
    out = eng.generate(input_ids, gen_length=128, block_length=32, steps=128)
    out.sequences, out.nfe, out.answer_lengths
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch

from . import validate
from .config import ModelConfig
from .denoise import DenoiseSettings, answer_lengths, denoise
from .model import LLaDAModel
from .text import NoTokenizerError, TextCodec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class GenerationOutput:
    sequences: torch.Tensor       # [B, P + gen_length] int64: the prompt, then the answer
    nfe: int                      # forward evaluations (denoising steps) used
    answer_lengths: torch.Tensor  # [B] answer tokens before the first stop token
    prompt_length: int
    seed: int                     # seed of sequence 0 (sequence b uses seed + b)

    @property
    def answers(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length:]


def _resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")


class Engine:
    def __init__(self, model: LLaDAModel, model_dir: Optional[str] = None):
        self.model = model
        self.cfg: ModelConfig = model.cfg
        self.model_dir = model_dir
        self._codec: Optional[TextCodec] = None

    @classmethod
    def from_pretrained(cls, model_dir: Union[str, os.PathLike], device: str = "cpu",
                        dtype: Union[str, torch.dtype] = "float32") -> "Engine":
        model_dir = os.fspath(model_dir)
        torch_dtype = _resolve_dtype(dtype)
        dev = torch.device(device)
        if dev.type != "cpu":
            raise NotImplementedError(
                f"device {device!r}: this release runs generation on the CPU kernels only; "
                "the CUDA engine path is not available yet")
        cfg = ModelConfig.from_dir(model_dir)
        return cls(LLaDAModel.load(model_dir, cfg, torch_dtype), model_dir)

    # ------------------------------------------------------------------ tokens

    @torch.no_grad()
    def logits(self, input_ids, attention_mask=None) -> torch.Tensor:
        """Full-sequence logits [B, L, vocab_size] float32 (masks allowed in the input)."""
        ids = validate.as_token_batch(input_ids)
        validate.check_tokens(ids, self.cfg, allow_mask=True)
        if ids.shape[1] > self.cfg.max_sequence_length:
            raise ValueError(f"input length {ids.shape[1]} exceeds max_sequence_length {self.cfg.max_sequence_length}")
        mask = validate.as_attention_mask(attention_mask, ids)
        key_mask = None if mask is None else mask.bool()
        return self.model.logits(ids, key_mask).float()[..., : self.cfg.vocab_size]

    def generate(self, input_ids, attention_mask=None, gen_length: int = 128, block_length: int = 32,
                 steps: int = 128, temperature: float = 0.0, cfg_scale: float = 0.0,
                 remasking: str = "low_confidence", threshold: Optional[float] = None, cache=None,
                 seed: Optional[int] = None, stop_at_eos: bool = False,
                 stop_token_ids: Optional[Sequence[int]] = None) -> GenerationOutput:
        """Masked-diffusion generation with the public LLaDA semantics (see README).

        stop_at_eos: once a finished block holds a stop token (default: config eos_token_id),
        the rest of that answer becomes EOS and, when every sequence has stopped, the
        remaining blocks are skipped. answer_lengths counts tokens before the first stop token.
        """
        if cache is not None:
            raise NotImplementedError(f"cache={cache!r}: block KV caches are not available yet; use cache=None")
        ids = validate.as_token_batch(input_ids)
        validate.check_tokens(ids, self.cfg)
        mask = validate.as_attention_mask(attention_mask, ids)
        B, P = ids.shape
        num_blocks, steps_per_block = validate.check_schedule(P, gen_length, block_length, steps, self.cfg)
        validate.check_sampling(temperature, cfg_scale, remasking, threshold)
        stops = self._stop_ids(stop_token_ids)
        if stop_at_eos and not stops:
            raise ValueError("stop_at_eos needs stop_token_ids: the config has no eos_token_id")
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little") >> 2
        if not isinstance(seed, int) or not 0 <= seed < 2 ** 62:
            raise ValueError(f"seed must be an integer in [0, 2**62), got {seed!r}")

        canvas = torch.full((B, P + gen_length), self.cfg.mask_token_id, dtype=torch.int64)
        canvas[:, :P] = ids
        key_mask, row_offset = None, torch.zeros(B, dtype=torch.int64)
        if mask is not None:
            key_mask = torch.cat([mask.bool(), torch.ones(B, gen_length, dtype=torch.bool)], 1)
            row_offset = (mask == 0).sum(1).to(torch.int64)
        settings = DenoiseSettings(
            gen_length=gen_length, block_length=block_length, steps_per_block=steps_per_block,
            temperature=float(temperature), cfg_scale=float(cfg_scale), remasking=remasking,
            threshold=None if threshold is None else float(threshold),
            stop_token_ids=stops if stop_at_eos else (), fill_id=self.cfg.eos_token_id)
        seeds = torch.arange(B, dtype=torch.int64) + seed
        nfe = denoise(self.model, canvas, key_mask, P, seeds, row_offset, settings)
        return GenerationOutput(canvas, nfe, answer_lengths(canvas[:, P:], stops), P, seed)

    def _stop_ids(self, stop_token_ids) -> List[int]:
        if stop_token_ids is not None:
            stops = [int(t) for t in stop_token_ids]
            bad = [t for t in stops if not 0 <= t < self.cfg.vocab_size or t == self.cfg.mask_token_id]
            if bad:
                raise ValueError(f"stop_token_ids {bad} are outside the vocabulary or equal the mask id")
            return stops
        return [] if self.cfg.eos_token_id is None else [int(self.cfg.eos_token_id)]

    # ------------------------------------------------------------------ text

    @property
    def codec(self) -> TextCodec:
        if self._codec is None:
            self._codec = TextCodec(self.model_dir)
        return self._codec

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


__all__ = ["Engine", "GenerationOutput", "NoTokenizerError"]
