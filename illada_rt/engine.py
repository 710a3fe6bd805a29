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
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Union

import torch
import torch.distributed as dist

from .config import ModelConfig
from .decoding import likelihood, validate
from .decoding.infill import InfillOutput, plan_infill
from .decoding.loop import Progress
from .decoding.plan import DenoiseSettings, GenerationPlan, plan_generation, resolve_seed
from .decoding.row_step import RowState, step_rows
from .decoding.runner import Runner
from .decoding.step import answer_lengths
from .device import resolve_device
from .model import LLaDAModel
from .ops import select_kernels
from .parallel.group import leave
from .parallel.launch import Followers, die_with_parent
from .parallel.mirror import Mirror, RankFailure, follow, mirrored, mirrored_stream
from .parallel.start import LoadOptions, load_rank, start
from .loading import load_model
from .decoding.stream import StreamEvent, stream_events
from .text import NoTokenizerError, TextCodec, TextFrontend

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
    def __init__(self, model: LLaDAModel, model_dir: Optional[str] = None, use_cuda_graphs: bool = True,
                 mirror: Optional[Mirror] = None, followers: Optional[Followers] = None):
        self.model = model
        # tensor parallelism: the rank's model is a shard; the leader announces every API call to
        # the other ranks (parallel/mirror.py) and owns the processes it started (followers)
        self.mirror, self._followers = mirror, followers
        self.closed = False
        # on the leader, an engine left open is closed when it is collected or at exit: the ranks
        # end together, never by a torn connection during the interpreter's shutdown
        self._shut_down = None if mirror is None or not mirror.group.leader else \
            weakref.finalize(self, _shut_down, mirror, followers)
        # CUDA: generate() replays one captured denoising step per shape (decoding/graph/); False: eager
        self.use_cuda_graphs = use_cuda_graphs
        self.runner = Runner(model, use_cuda_graphs)
        self.cfg: ModelConfig = model.cfg
        self.device: torch.device = model.device
        self.kernels = model.kernels   # per op family: the compiled kernel or its torch twin
        self.model_dir = model_dir
        self.text = TextFrontend(self.cfg, model_dir)   # tokenizer and chat template (text/)

    @classmethod
    def from_pretrained(cls, model_dir: Union[str, os.PathLike], device: str = "cpu",
                        dtype: Union[str, torch.dtype] = "float32", progress=None,
                        quantization: Optional[str] = None, quantize_head: bool = False,
                        group_size: int = 128, use_cuda_graphs: bool = True,
                        kernels: Optional[str] = None, tensor_parallel: int = 1) -> "Engine":
        """device: "cpu" or "cuda[:N]" (RuntimeError naming the reason where CUDA cannot run).
        progress: optional callable (tensors loaded, tensors in all), called while loading.
        quantization: None, "int8", "int4" or "fp8": quantize the block matrices (and with
        quantize_head the LM head) while loading, int4 in groups of group_size inputs (see
        quant/). A checkpoint written by illada_rt.quantize loads as stored.
        use_cuda_graphs: on CUDA, generate() replays captured steps (False: eager, for debugging).
        kernels: which implementation runs each op family (ops/kernels.py): "auto" (the compiled
        kernels where the extension has code for the device, else the torch twins, with a warning),
        "custom" (RuntimeError where they cannot run), "torch", or per family, e.g.
        "attention=torch,remask=custom". None: the ILLADA_KERNELS environment variable, else "auto".
        tensor_parallel: N > 1 splits the model over N ranks (parallel/): this process is rank 0
        and starts ranks 1..N-1 (on CUDA, cuda:0..N-1), or, under torchrun, every rank calls this
        and the ranks other than 0 serve rank 0 until it closes the engine (then return it closed).
        The engine behaves as a single-process one; close() (or `with`) stops the other ranks."""
        model_dir = os.fspath(model_dir)
        torch_dtype = _resolve_dtype(dtype)
        if tensor_parallel != 1:
            opts = LoadOptions(model_dir, device, str(torch_dtype).split(".")[-1], quantization, quantize_head,
                               group_size, kernels, use_cuda_graphs)
            rank = start(opts, tensor_parallel, (__name__, _tensor_parallel_follower.__name__), progress)
            engine = cls(rank.model, model_dir, use_cuda_graphs, rank.mirror, rank.followers)
            if not rank.mirror.group.leader:     # a torchrun rank other than 0: serve rank 0 until it closes
                follow(engine, rank.mirror)
                engine._release()
            return engine
        dev = resolve_device(device)
        kern = select_kernels(kernels, dev)
        model = load_model(model_dir, torch_dtype, dev, progress, quantization, quantize_head, group_size, kern)
        return cls(model, model_dir, use_cuda_graphs)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Release the engine: with tensor parallelism, the other ranks end (the processes this
        one started are joined) and the process group is left. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._shut_down is not None:
            self._shut_down()                  # at most once, whoever calls it first
        elif self.mirror is not None:
            self._release()

    def _ranks_together(self, run: Callable):
        """run() on the leader; a rank that died, hung or left (a collective timed out) closes the
        engine and raises RuntimeError saying so."""
        try:
            return run()
        except (RankFailure, dist.DistError) as e:
            self.mirror.closed = True          # the others cannot be told: they are gone or stuck
            self.close()
            raise RuntimeError(f"{e if isinstance(e, RankFailure) else f'tensor parallelism: {e}'}; "
                               "the engine is closed (load it again)") from e

    def _release(self) -> None:
        """A follower's end (or a leader's without a finalizer): leave the process group."""
        self.closed = True
        if self.mirror is not None:
            leave()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ tokens

    @mirrored
    @torch.no_grad()
    def logits(self, input_ids, attention_mask=None) -> torch.Tensor:
        """Full-sequence logits [B, L, vocab_size] float32 on the engine's device (masks allowed in the input)."""
        ids = validate.as_token_batch(input_ids)
        validate.check_tokens(ids, self.cfg, allow_mask=True)
        if ids.shape[1] > self.cfg.max_sequence_length:
            raise ValueError(f"input length {ids.shape[1]} exceeds max_sequence_length {self.cfg.max_sequence_length}")
        mask = validate.as_attention_mask(attention_mask, ids)
        key_mask = None if mask is None else mask.bool()
        key_mask = None if key_mask is None else key_mask.to(self.device)
        logits = self.model.full_logits(self.model.logits(ids.to(self.device), key_mask))
        return logits.float()[..., : self.cfg.vocab_size]

    @mirrored
    def generate(self, input_ids, attention_mask=None, gen_length: int = 128, block_length: int = 32,
                 steps: int = 128, temperature: float = 0.0, cfg_scale: float = 0.0,
                 remasking: str = "low_confidence", threshold: Optional[float] = None, cache: Optional[str] = None,
                 seed: Optional[int] = None, stop_at_eos: bool = False,
                 stop_token_ids: Optional[Sequence[int]] = None) -> GenerationOutput:
        """Masked-diffusion generation with the public LLaDA semantics (see README).

        stop_at_eos: once a finished block holds a stop token (default: config eos_token_id),
        the rest of that answer becomes EOS and, when every sequence has stopped, the
        remaining blocks are skipped. answer_lengths counts tokens before the first stop token.
        cache: None (exact), or Fast-dLLM's "prefix" or "dual" block KV cache (decoding/kv_cache.py):
        cheaper steps that approximate the exact mode; not with cfg_scale > 0.
        """
        plan = self.plan_generation(input_ids, attention_mask, gen_length=gen_length, block_length=block_length,
                                    steps=steps, temperature=temperature, cfg_scale=cfg_scale, remasking=remasking,
                                    threshold=threshold, cache=cache, seed=seed, stop_at_eos=stop_at_eos,
                                    stop_token_ids=stop_token_ids)
        nfe = self.runner.run(plan)
        sequences = plan.canvas.cpu()
        return GenerationOutput(sequences, nfe, answer_lengths(sequences[:, plan.prompt_len:], plan.stops),
                                plan.prompt_len, plan.seed)

    @mirrored_stream
    def stream(self, input_ids, attention_mask=None, every_step: bool = False, **options) -> Iterator[StreamEvent]:
        """generate() as a stream of StreamEvents (see stream.py): one per finished block, and
        with every_step=True one per denoising step. `options` are generate()'s.
        Arguments are checked here, before the first event is asked for."""
        plan = self.plan_generation(input_ids, attention_mask, **options)
        return stream_events(self.runner.steps(plan), plan.canvas, plan.prompt_len, plan.block_length, every_step,
                             self.answer_decoder(plan.stops))

    def plan_generation(self, input_ids, attention_mask, **options) -> GenerationPlan:
        """Check generate()'s arguments (`options`) and lay out the canvas [B, P + gen_length] on
        the device: the plan that generate, stream and the serving scheduler run (decoding/plan.py)."""
        return plan_generation(self.cfg, self.device, input_ids, attention_mask, **options)

    # ------------------------------------------------------------------ serving's steps

    @mirrored_stream
    def denoise_steps(self, plan: GenerationPlan) -> Iterator[Progress]:
        """The eager loop's progress over a plan (decoding/loop.py), filling plan.canvas in place:
        what serving runs for KV-cache cohorts and infills, step by step."""
        return self.runner.steps(plan.to(self.device))

    @mirrored
    def step_rows(self, rows: List[RowState], settings: DenoiseSettings) -> List[int]:
        """One step over rows that each denoise their own block (decoding/row_step.py): the serving
        row batcher's step. Returns the masks left in each row's block."""
        return step_rows(self.model, [r.on(self.device) for r in rows], settings)

    @mirrored
    def infill(self, input_ids, attention_mask=None, steps: Optional[int] = None, block_length: Optional[int] = None,
               temperature: float = 0.0, remasking: str = "low_confidence", threshold: Optional[float] = None,
               seed: Optional[int] = None) -> InfillOutput:
        """Fill every mask of input_ids [B, L] (anywhere, spans or single tokens); keep the rest.

        Masks are filled in blocks of block_length masks, left to right (None: one block),
        with steps split evenly over the blocks (None: one step per mask); see decoding/infill.py.
        """
        plan = plan_infill(self.cfg, self.device, input_ids, attention_mask, steps, block_length, temperature,
                           remasking, threshold, seed)
        nfe = self.runner.run(plan)
        return InfillOutput(plan.canvas.cpu(), nfe, plan.seed)

    # ------------------------------------------------------------------ text (through self.text)

    @property
    def codec(self) -> TextCodec:
        """The checkpoint's tokenizer (NoTokenizerError where it ships none)."""
        return self.text.codec

    def answer_decoder(self, stops: List[int]) -> Optional[Callable[[torch.Tensor], List[str]]]:
        """answers [B, n] -> their texts up to the first stop token; None without a tokenizer."""
        return self.text.answer_decoder(stops)

    def encode_prompts(self, prompts: Sequence[str], chat: bool = False):
        """Token ids [B, P] left-padded and the attention mask [B, P] (text/frontend.py)."""
        return self.text.encode_prompts(prompts, chat)

    def generate_text(self, prompts: Union[str, Sequence[str]], chat: bool = False, **kwargs) -> Union[str, List[str]]:
        """Generate from text prompts; returns the decoded answers (a str for a str prompt).
        kwargs are generate()'s."""
        single = isinstance(prompts, str)
        batch = [prompts] if single else list(prompts)
        if not batch:
            raise ValueError("prompts is empty")
        ids, mask = self.text.encode_prompts(batch, chat=chat)
        out = self.generate(ids, attention_mask=mask if bool((mask == 0).any()) else None, **kwargs)
        texts = [self.text.decode(out.answers[b, : int(out.answer_lengths[b])]) for b in range(len(batch))]
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
        ids, mask = self.text.encode_masked_texts(batch, mask_marker)
        out = self.infill(ids, attention_mask=mask, **kwargs)
        pads = [0] * len(batch) if mask is None else (mask == 0).sum(1).tolist()
        filled = [self.text.decode(out.sequences[b, pads[b]:]) for b in range(len(batch))]
        return filled[0] if single else filled

    # ------------------------------------------------------------------ scores

    @mirrored
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

    @mirrored
    def score_choices(self, prompt, options) -> torch.Tensor:
        """[n_options] float64: log p(option | prompt) with the option masked whole, in one forward."""
        if likelihood.is_single(options) or not len(options):
            raise ValueError("options must be a non-empty list of token sequences")
        _, prompts, options = likelihood.check_pairs(self.model, [prompt] * len(options), options, "options")
        return likelihood.score_choices(self.model, prompts[0], options)


__all__ = ["Engine", "GenerationOutput", "InfillOutput", "StreamEvent", "NoTokenizerError"]


def _shut_down(mirror: Mirror, followers: Optional[Followers]) -> None:
    """The leader's end of tensor parallelism: tell the other ranks (unless they cannot be told),
    wait for the processes it started, leave the process group."""
    try:
        mirror.close()                         # no-op where the mirror is closed already
    except Exception:
        pass                                   # a dead rank: the followers are stopped below
    finally:
        if followers is not None:
            followers.stop()
        leave()


def _tensor_parallel_follower(rank: int, world: int, parent_pid: int, init_method: str, opts: dict) -> None:
    """The life of a rank 1..N-1 that Engine.from_pretrained(tensor_parallel=N) started (in a
    process of its own, parallel/launch.py): load its shard, run what rank 0 announces until it
    closes the engine."""
    die_with_parent(parent_pid)
    opts = LoadOptions.from_json(opts)
    rank = load_rank(opts, rank, world, init_method)
    engine = Engine(rank.model, opts.model_dir, opts.use_cuda_graphs, rank.mirror)
    follow(engine, rank.mirror)
    engine._release()
