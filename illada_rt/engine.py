"""Engine: the public entry point. Loads a checkpoint directory and generates.

    eng = Engine.from_pretrained(model_dir, device="cpu", dtype="float32")
    logits = eng.logits(input_ids)                     # [B, L, V] float32
    out = eng.generate(input_ids, gen_length=128, block_length=32, steps=128)
    out.sequences, out.nfe, out.answer_lengths
    for event in eng.stream(input_ids, gen_length=128, block_length=32, steps=128): ...
    eng.infill(ids_with_masks, steps=16).sequences
    eng.log_likelihood(prompts, answers, mc_num=128), eng.score_choices(prompt, options)

device="cuda" runs every step on the GPU (see device.py): inputs may be given on any device;
sequences, stream events, infills and scores come back on the CPU, logits stay on the device.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Union

import torch

from .decoding import infill as infill_mod
from .decoding import likelihood, validate
from .config import ModelConfig
from .decoding.graph.capture import GraphCache
from .decoding.loop import Block, DenoiseSettings, answer_blocks, answer_lengths, denoise, denoise_steps
from .device import resolve_device
from .decoding.infill import InfillOutput
from .model import LLaDAModel
from .ops import select_kernels
from .loading import load_model
from .decoding.stream import StreamEvent, stream_events
from .engine_text import TextAPI
from .text import NoTokenizerError

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


@dataclass
class GenerationPlan:
    """A checked generation request laid out on its canvas."""
    canvas: torch.Tensor               # [B, P + gen_length] int64 on the device: the prompt, then masks
    key_mask: Optional[torch.Tensor]   # [B, P + gen_length] bool, or None without padding (device)
    prompt_len: int
    block_length: int
    blocks: List[Block]
    seeds: torch.Tensor                # [B] seed + b (device)
    row_offset: torch.Tensor           # [B] left padding (device)
    settings: DenoiseSettings
    stops: List[int]
    seed: int


def resolve_seed(seed: Optional[int]) -> int:
    """A random seed for None; otherwise the seed, checked."""
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 2
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 62:
        raise ValueError(f"seed must be an integer in [0, 2**62), got {seed!r}")
    return seed


def _resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")


class Engine(TextAPI):
    def __init__(self, model: LLaDAModel, model_dir: Optional[str] = None, use_cuda_graphs: bool = True):
        self.model = model
        # CUDA: generate() replays one captured denoising step per shape (cuda_graphs.py); False: eager
        self.use_cuda_graphs = use_cuda_graphs
        self._graphs = GraphCache(model) if use_cuda_graphs and model.device.type == "cuda" else None
        self.cfg: ModelConfig = model.cfg
        self.device: torch.device = model.device
        self.kernels = model.kernels   # per op family: the compiled kernel or its torch twin
        self.model_dir = model_dir
        self._codec = None   # the checkpoint's tokenizer, loaded on first use (engine_text.py)

    @classmethod
    def from_pretrained(cls, model_dir: Union[str, os.PathLike], device: str = "cpu",
                        dtype: Union[str, torch.dtype] = "float32", progress=None,
                        quantization: Optional[str] = None, quantize_head: bool = False,
                        group_size: int = 128, use_cuda_graphs: bool = True,
                        kernels: Optional[str] = None) -> "Engine":
        """device: "cpu" or "cuda[:N]" (RuntimeError naming the reason where CUDA cannot run).
        progress: optional callable (tensors loaded, tensors in all), called while loading.
        quantization: None, "int8", "int4" or "fp8": quantize the block matrices (and with
        quantize_head the LM head) while loading, int4 in groups of group_size inputs (see
        quant/). A checkpoint written by illada_rt.quantize loads as stored.
        use_cuda_graphs: on CUDA, generate() replays captured steps (False: eager, for debugging).
        kernels: which implementation runs each op family (ops/kernels.py): "auto" (the compiled
        kernels where the extension has code for the device, else the torch twins, with a warning),
        "custom" (RuntimeError where they cannot run), "torch", or per family, e.g.
        "attention=torch,remask=custom". None: the ILLADA_KERNELS environment variable, else "auto"."""
        model_dir = os.fspath(model_dir)
        torch_dtype = _resolve_dtype(dtype)
        dev = resolve_device(device)
        kern = select_kernels(kernels, dev)
        model = load_model(model_dir, torch_dtype, dev, progress, quantization, quantize_head, group_size, kern)
        return cls(model, model_dir, use_cuda_graphs)

    def _on_device(self, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.to(self.device)

    # ------------------------------------------------------------------ tokens

    @torch.no_grad()
    def logits(self, input_ids, attention_mask=None) -> torch.Tensor:
        """Full-sequence logits [B, L, vocab_size] float32 on the engine's device (masks allowed in the input)."""
        ids = validate.as_token_batch(input_ids)
        validate.check_tokens(ids, self.cfg, allow_mask=True)
        if ids.shape[1] > self.cfg.max_sequence_length:
            raise ValueError(f"input length {ids.shape[1]} exceeds max_sequence_length {self.cfg.max_sequence_length}")
        mask = validate.as_attention_mask(attention_mask, ids)
        key_mask = None if mask is None else mask.bool()
        return self.model.logits(self._on_device(ids), self._on_device(key_mask)).float()[..., : self.cfg.vocab_size]

    def generate(self, input_ids, attention_mask=None, gen_length: int = 128, block_length: int = 32,
                 steps: int = 128, temperature: float = 0.0, cfg_scale: float = 0.0,
                 remasking: str = "low_confidence", threshold: Optional[float] = None, cache: Optional[str] = None,
                 seed: Optional[int] = None, stop_at_eos: bool = False,
                 stop_token_ids: Optional[Sequence[int]] = None) -> GenerationOutput:
        """Masked-diffusion generation with the public LLaDA semantics (see README).

        stop_at_eos: once a finished block holds a stop token (default: config eos_token_id),
        the rest of that answer becomes EOS and, when every sequence has stopped, the
        remaining blocks are skipped. answer_lengths counts tokens before the first stop token.
        cache: None (exact), or Fast-dLLM's "prefix" or "dual" block KV cache (see cache.py):
        cheaper steps that approximate the exact mode; not with cfg_scale > 0.
        """
        job = self.plan_generation(input_ids, attention_mask, gen_length=gen_length, block_length=block_length,
                            steps=steps, temperature=temperature, cfg_scale=cfg_scale, remasking=remasking,
                            threshold=threshold, cache=cache, seed=seed, stop_at_eos=stop_at_eos,
                            stop_token_ids=stop_token_ids)
        run = denoise if self._graphs is None else self._graphs.denoise
        nfe = run(self.model, job.canvas, job.key_mask, job.blocks, job.prompt_len, job.seeds, job.row_offset,
                  job.settings)
        sequences = job.canvas.cpu()
        return GenerationOutput(sequences, nfe, answer_lengths(sequences[:, job.prompt_len:], job.stops),
                                job.prompt_len, job.seed)

    def stream(self, input_ids, attention_mask=None, every_step: bool = False, **options) -> Iterator[StreamEvent]:
        """generate() as a stream of StreamEvents (see stream.py): one per finished block, and
        with every_step=True one per denoising step. `options` are generate()'s.
        Arguments are checked here, before the first event is asked for."""
        job = self.plan_generation(input_ids, attention_mask, **options)
        progress = denoise_steps(self.model, job.canvas, job.key_mask, job.blocks, job.prompt_len, job.seeds,
                                 job.row_offset, job.settings)
        return stream_events(progress, job.canvas, job.prompt_len, job.block_length, every_step,
                             self.answer_decoder(job.stops))

    def plan_generation(self, input_ids, attention_mask, gen_length: int = 128, block_length: int = 32,
                        steps: int = 128, temperature: float = 0.0, cfg_scale: float = 0.0,
                        remasking: str = "low_confidence", threshold: Optional[float] = None,
                        cache: Optional[str] = None, seed: Optional[int] = None, stop_at_eos: bool = False,
                        stop_token_ids: Optional[Sequence[int]] = None) -> "GenerationPlan":
        """Check generate()'s arguments and lay out the canvas [B, P + gen_length] on the device
        (what generate, stream and the serving scheduler run)."""
        ids = validate.as_token_batch(input_ids)
        validate.check_tokens(ids, self.cfg)
        mask = validate.as_attention_mask(attention_mask, ids)
        B, P = ids.shape
        _, steps_per_block = validate.check_schedule(P, gen_length, block_length, steps, self.cfg)
        validate.check_sampling(temperature, cfg_scale, remasking, threshold)
        stops = self._stop_ids(stop_token_ids)
        if stop_at_eos and not stops:
            raise ValueError("stop_at_eos needs stop_token_ids: the config has no eos_token_id")
        settings = DenoiseSettings(
            steps_per_block=steps_per_block, temperature=float(temperature), cfg_scale=float(cfg_scale),
            remasking=remasking, threshold=None if threshold is None else float(threshold),
            stop_token_ids=stops if stop_at_eos else (), fill_id=self.cfg.eos_token_id, cache=cache)
        seed = resolve_seed(seed)

        canvas = torch.full((B, P + gen_length), self.cfg.mask_token_id, dtype=torch.int64)
        canvas[:, :P] = ids
        key_mask, row_offset = None, torch.zeros(B, dtype=torch.int64)
        if mask is not None:
            key_mask = torch.cat([mask.bool(), torch.ones(B, gen_length, dtype=torch.bool)], 1)
            row_offset = (mask == 0).sum(1).to(torch.int64)
        seeds = torch.arange(B, dtype=torch.int64) + seed
        dev = self._on_device
        return GenerationPlan(dev(canvas), dev(key_mask), P, block_length, answer_blocks(P, gen_length, block_length),
                    dev(seeds), dev(row_offset), settings, stops, seed)

    def _stop_ids(self, stop_token_ids) -> List[int]:
        if stop_token_ids is not None:
            stops = [int(t) for t in stop_token_ids]
            bad = [t for t in stops if not 0 <= t < self.cfg.vocab_size or t == self.cfg.mask_token_id]
            if bad:
                raise ValueError(f"stop_token_ids {bad} are outside the vocabulary or equal the mask id")
            return stops
        return [] if self.cfg.eos_token_id is None else [int(self.cfg.eos_token_id)]

    def infill(self, input_ids, attention_mask=None, steps: Optional[int] = None, block_length: Optional[int] = None,
               temperature: float = 0.0, remasking: str = "low_confidence", threshold: Optional[float] = None,
               seed: Optional[int] = None) -> InfillOutput:
        """Fill every mask of input_ids [B, L] (anywhere, spans or single tokens); keep the rest.

        Masks are filled in blocks of block_length masks, left to right (None: one block),
        with steps split evenly over the blocks (None: one step per mask); see infill.py.
        """
        plan = infill_mod.plan(input_ids, attention_mask, self.cfg, steps, block_length)
        validate.check_sampling(temperature, 0.0, remasking, threshold)
        seed = resolve_seed(seed)
        settings = DenoiseSettings(steps_per_block=plan.steps_per_block, temperature=float(temperature),
                                   remasking=remasking, threshold=None if threshold is None else float(threshold))
        seeds = torch.arange(plan.canvas.shape[0], dtype=torch.int64) + seed
        dev = self._on_device
        canvas, blocks = dev(plan.canvas), [Block(lo, hi, dev(owns)) for lo, hi, owns in plan.blocks]
        nfe = denoise(self.model, canvas, dev(plan.key_mask), blocks, 0, dev(seeds), dev(plan.row_offset), settings)
        return InfillOutput(canvas.cpu(), nfe, seed)

    def log_likelihood(self, prompts, answers, mc_num: int = 128, batch_size: int = 16, cfg_scale: float = 0.0,
                       seed: int = 0) -> Union[float, torch.Tensor]:
        """LLaDA's Monte-Carlo estimate of log p(answer | prompt) (see likelihood.py).

        One prompt and answer (token lists or 1-D tensors) give a float; lists of them give
        a float64 tensor [N]. Pair j draws its masks from a torch.Generator seeded seed + j.
        """
        single, prompt_list, answer_list = likelihood.check_pairs(self.model, prompts, answers)
        likelihood.check_estimate(mc_num, batch_size, cfg_scale)
        out = likelihood.log_likelihood(self.model, prompt_list, answer_list, mc_num, batch_size, float(cfg_scale),
                                        resolve_seed(seed))
        return float(out[0]) if single else out

    def score_choices(self, prompt, options) -> torch.Tensor:
        """[n_options] float64: log p(option | prompt) with the option masked whole, in one forward."""
        if likelihood.is_single(options) or not len(options):
            raise ValueError("options must be a non-empty list of token sequences")
        _, prompts, options = likelihood.check_pairs(self.model, [prompt] * len(options), options, "options")
        return likelihood.score_choices(self.model, prompts[0], options)


__all__ = ["Engine", "GenerationOutput", "InfillOutput", "StreamEvent", "NoTokenizerError"]
