"""A generation (or an infill) as one plan: the checked request laid out on its canvas.

    plan = plan_generation(cfg, device, input_ids, attention_mask, gen_length=64, block_length=16, steps=64)
    plan = plan_infill(cfg, device, ids_with_masks, attention_mask, steps=16)     # infill.py
    Runner(model).run(plan)                 # fills plan.canvas in place (runner.py)

Every argument is checked here, before any device work; a plan holds what the loop needs and
nothing else (its tensors on the device).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import List, NamedTuple, Optional, Sequence

import torch

from ..config import ModelConfig
from . import validate
from .schedule import steps_that_run

CACHE_MODES = ("prefix", "dual")     # Fast-dLLM's block KV caches (kv_cache.py)


@dataclass
class DenoiseSettings:
    steps_per_block: int                 # the plans keep it at most the masks a block fills (schedule.steps_that_run)
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    threshold: Optional[float] = None
    stop_token_ids: Sequence[int] = ()   # early stop: a finished block holding one of these ends the answer
    fill_id: Optional[int] = None        # token written after the stop token (None: repeat the stop token)
    cache: Optional[str] = None          # None (exact), "prefix" or "dual"

    def __post_init__(self):
        if self.cache is not None and self.cache not in CACHE_MODES:
            raise ValueError(f"cache must be None or one of {CACHE_MODES}, got {self.cache!r}")
        if self.cache is not None and self.cfg_scale > 0:
            raise ValueError(f"cache={self.cache!r} does not support classifier-free guidance (as in Fast-dLLM); "
                             "use cfg_scale=0 or cache=None")


class Block(NamedTuple):
    lo: int                               # canvas span [lo, hi) holding the block's masks
    hi: int
    owns: Optional[torch.Tensor] = None   # [B, hi - lo] bool: the masks this block fills (None: all of them)


@dataclass
class GenerationPlan:
    """A checked request laid out on its canvas; runner.py runs it, filling canvas in place."""
    canvas: torch.Tensor               # [B, L] int64 on the device: the prompt, then masks (infill: the input)
    key_mask: Optional[torch.Tensor]   # [B, L] bool, or None without padding (device)
    prompt_len: int                    # where the answer starts (0 for an infill)
    block_length: int                  # answer block length (0 for an infill: its blocks are mask ranks)
    blocks: List[Block]
    seeds: torch.Tensor                # [B] seed + b (device)
    row_offset: torch.Tensor           # [B] left padding (device)
    settings: DenoiseSettings
    stops: List[int]                   # stop ids: answer_lengths (and early stop when settings has them)
    seed: int                          # seed of sequence 0

    @property
    def is_infill(self) -> bool:
        return any(b.owns is not None for b in self.blocks)

    def to(self, device: torch.device) -> "GenerationPlan":
        """This plan with its tensors on device (itself where they are there already: a run then
        fills this plan's canvas)."""
        if self.canvas.device == torch.device(device):
            return self
        move = on_device(device)
        return replace(self, canvas=move(self.canvas), key_mask=move(self.key_mask), seeds=move(self.seeds),
                       row_offset=move(self.row_offset),
                       blocks=[Block(lo, hi, move(owns)) for lo, hi, owns in self.blocks])


def answer_blocks(prompt_len: int, gen_length: int, block_length: int) -> List[Block]:
    """LLaDA's semi-autoregressive blocks: consecutive block_length spans of the answer."""
    return [Block(prompt_len + j, prompt_len + j + block_length) for j in range(0, gen_length, block_length)]


def resolve_seed(seed: Optional[int]) -> int:
    """A random seed for None; otherwise the seed, checked."""
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 2
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 62:
        raise ValueError(f"seed must be an integer in [0, 2**62), got {seed!r}")
    return seed


def stop_ids(cfg: ModelConfig, stop_token_ids: Optional[Sequence[int]]) -> List[int]:
    """The stop ids of a request: the ones given (checked), else the config's eos_token_id."""
    if stop_token_ids is not None:
        stops = validate.as_token_ids(stop_token_ids, "stop_token_ids")
        bad = [t for t in stops if not 0 <= t < cfg.vocab_size or t == cfg.mask_token_id]
        if bad:
            raise ValueError(f"stop_token_ids {bad} are outside the vocabulary or equal the mask id")
        return stops
    return [] if cfg.eos_token_id is None else [int(cfg.eos_token_id)]


def plan_generation(cfg: ModelConfig, device: torch.device, input_ids, attention_mask, gen_length: int = 128,
                    block_length: int = 32, steps: int = 128, temperature: float = 0.0, cfg_scale: float = 0.0,
                    remasking: str = "low_confidence", threshold: Optional[float] = None,
                    cache: Optional[str] = None, seed: Optional[int] = None, stop_at_eos: bool = False,
                    stop_token_ids: Optional[Sequence[int]] = None) -> GenerationPlan:
    """Check generate()'s arguments and lay out the canvas [B, P + gen_length] on `device`."""
    ids = validate.as_token_batch(input_ids)
    validate.check_tokens(ids, cfg)
    mask = validate.as_attention_mask(attention_mask, ids)
    B, P = ids.shape
    _, steps_per_block = validate.check_schedule(P, gen_length, block_length, steps, cfg)
    steps_per_block = steps_that_run(steps_per_block, block_length)
    validate.check_sampling(temperature, cfg_scale, remasking, threshold)
    stops = stop_ids(cfg, stop_token_ids)
    if validate.check_flag(stop_at_eos, "stop_at_eos") and not stops:
        raise ValueError("stop_at_eos needs stop_token_ids: the config has no eos_token_id")
    settings = DenoiseSettings(
        steps_per_block=steps_per_block, temperature=float(temperature), cfg_scale=float(cfg_scale),
        remasking=remasking, threshold=None if threshold is None else float(threshold),
        stop_token_ids=stops if stop_at_eos else (), fill_id=cfg.eos_token_id, cache=cache)
    seed = resolve_seed(seed)
    canvas = torch.full((B, P + gen_length), cfg.mask_token_id, dtype=torch.int64)
    canvas[:, :P] = ids
    key_mask, row_offset = None, torch.zeros(B, dtype=torch.int64)
    if mask is not None:
        key_mask = torch.cat([mask.bool(), torch.ones(B, gen_length, dtype=torch.bool)], 1)
        row_offset = (mask == 0).sum(1).to(torch.int64)
    seeds = torch.arange(B, dtype=torch.int64) + seed
    dev = on_device(device)
    return GenerationPlan(dev(canvas), dev(key_mask), P, block_length, answer_blocks(P, gen_length, block_length),
                          dev(seeds), dev(row_offset), settings, stops, seed)


def on_device(device: torch.device):
    """t -> t on device (None stays None)."""
    return lambda t: None if t is None else t.to(device)
