"""What a caller hands the shared engine and what comes back: requests, events, outputs, errors.

A request is one of three kinds of work, and the scheduler matches on the kind:

    RowRequest      joins the continuous row batch: one denoising step at a time, its own block (rows.py)
    CohortRequest   a block KV cache: starts with the waiting requests of equal key, runs to its end (cohort.py)
    InfillRequest   fills the masks of a sequence, alone (infill.py)

The last two never share a step with rows: they run when the row batch is empty, in queue order.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from ..decoding.plan import Block, DenoiseSettings
from ..decoding.stream import StreamEvent

# serving's events are the engine's StreamEvent: for one request, tokens a list of ids and text a
# str; the last one is "done" with the RequestOutput (decoding/stream.py)
RequestEvent = StreamEvent


class QueueFullError(RuntimeError):
    """The engine's queue of waiting requests is at its bound; the request was refused."""


class EngineClosedError(RuntimeError):
    """The engine was shut down before the request could be served."""


class RequestTimeoutError(TimeoutError):
    """The request's deadline passed before it finished."""


class RequestCancelledError(RuntimeError):
    """The caller cancelled the request."""


@dataclass
class RequestOutput:
    tokens: List[int]            # the whole answer (gen_length tokens; after a stop token, the fill token)
    answer_length: int           # answer tokens before the first stop token
    text: Optional[str]          # the answer's first answer_length tokens decoded (None without a tokenizer)
    prompt_tokens: int
    nfe: int                     # denoising steps (forwards) this request took part in
    seed: int
    finish_reason: str           # "stop": a stop token ended the answer; "length": gen_length reached


_ids = itertools.count()


@dataclass(eq=False, kw_only=True)   # identity: requests are compared as objects, never by value
class Request:
    """What every kind of request has: where its events go, its seed, deadline and cancel flag.

    `sink(event)` receives RequestEvents and finally one "done" event; `fail(exc)` is called
    instead when the request ends with an error. Both run on the scheduler's thread.
    """
    sink: Callable[[RequestEvent], None]
    fail: Callable[[BaseException], None]
    seed: int
    deadline: Optional[float] = None  # time.monotonic() after which the request fails with RequestTimeoutError
    id: int = field(init=False, default_factory=lambda: next(_ids))
    submitted: float = field(init=False, default_factory=time.monotonic)
    _cancelled: threading.Event = field(init=False, default_factory=threading.Event)

    def cancel(self):
        """Ask the scheduler to drop the request (it fails with RequestCancelledError at its next step)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline


@dataclass(eq=False, kw_only=True)
class GenerationRequest(Request):
    """A generate()/stream() request, checked by Engine.plan_generation."""
    prompt_len: int
    settings: DenoiseSettings
    stops: List[int]                  # stop ids for answer_length (and early stop when settings has them)
    every_step: bool = False          # a "step" event after every denoising step


@dataclass(eq=False, kw_only=True)
class RowRequest(GenerationRequest):
    """Joins the row batch: its canvas is denoised in place, one step at a time (rows.py)."""
    canvas: torch.Tensor              # [P + gen_length] int64 on the device: the prompt, then masks
    blocks: List[Block]               # answer blocks, in the request's own canvas coordinates

    def batch_key(self):
        """Requests with equal keys can share a device batch: remask takes these as scalars."""
        s = self.settings
        return (s.temperature, s.cfg_scale, s.remasking, s.threshold)


@dataclass(eq=False, kw_only=True)
class CohortRequest(GenerationRequest):
    """A block KV-cache request: runs in a cohort of waiting requests with an equal key (cohort.py)."""
    prompt: torch.Tensor              # [P] int64 on the CPU: the prompt as given
    options: dict                     # the generate() options as given
    key: Optional[tuple]              # cohort.cohort_key: equal keys run together; None: alone


@dataclass(eq=False, kw_only=True)
class InfillRequest(Request):
    """Engine.infill for one sequence, run alone (infill.py); its output's tokens are the whole sequence."""
    input_ids: torch.Tensor           # [L] int64 on the CPU, masks anywhere
    options: dict                     # the infill() options as given
