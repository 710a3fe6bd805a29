"""What a caller hands the shared engine and what comes back: requests, events, outputs, errors."""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from ..decoding.plan import Block, DenoiseSettings


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


@dataclass
class RequestEvent:
    kind: str                    # "block": a block is final; "step": a denoising step (every_step); "done"
    block: int                   # index of the block finished or being denoised (-1 for "done")
    tokens: List[int]            # "block": the answer so far; "step": the whole answer, masks included
    new_from: int = 0            # "block": tokens[new_from:] are new in this event
    text: Optional[str] = None   # "block": the answer so far decoded, up to a stop token
    output: Optional[RequestOutput] = None   # "done" only

    @property
    def new_tokens(self) -> List[int]:
        return self.tokens[self.new_from:]


_ids = itertools.count()


@dataclass(eq=False)   # identity: requests are compared as objects, never by value
class Request:
    """One generation request, checked and laid out, as the scheduler sees it.

    `sink(event)` receives RequestEvents and finally one "done" event; `fail(exc)` is called
    instead when the request ends with an error. Both run on the scheduler's thread.
    """
    canvas: torch.Tensor              # [P + gen_length] int64 on the device: the prompt, then masks
    prompt_len: int
    blocks: List[Block]               # answer blocks, in the request's own canvas coordinates
    settings: DenoiseSettings
    stops: List[int]                  # stop ids for answer_length (and early stop when settings has them)
    seed: int
    sink: Callable[[RequestEvent], None]
    fail: Callable[[BaseException], None]
    every_step: bool = False
    deadline: Optional[float] = None  # time.monotonic() after which the request fails with RequestTimeoutError
    # Requests that do not join the row batch (KV-cache modes, infilling) carry their runner:
    # exclusive(requests) serves a cohort of requests with equal cohort_key (None: alone) while
    # the row batch is empty, sends their events, and returns each one's output or error.
    exclusive: Optional[Callable[[List["Request"]], List[object]]] = None
    cohort_key: Optional[tuple] = None
    prompt: Optional[torch.Tensor] = None   # [P] int64 on the CPU: the prompt as given
    options: dict = field(default_factory=dict)   # the generate() options as given
    id: int = field(default_factory=lambda: next(_ids))
    submitted: float = field(default_factory=time.monotonic)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self):
        """Ask the scheduler to drop the request (it fails with RequestCancelledError at its next step)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline

    def batch_key(self):
        """Requests with equal keys can share a device batch: remask takes these as scalars."""
        s = self.settings
        return (s.temperature, s.cfg_scale, s.remasking, s.threshold)
