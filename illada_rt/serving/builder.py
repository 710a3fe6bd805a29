"""Turn a caller's prompt and options into a checked Request (errors raise here, in the caller)."""
from __future__ import annotations

import time
from typing import Optional

import torch

from .. import validate
from ..denoise import answer_lengths
from .requests import Request, RequestCancelledError, RequestEvent, RequestOutput, RequestTimeoutError


def prompt_ids(engine, prompt) -> torch.Tensor:
    """A text (encoded with the checkpoint's tokenizer) or token ids -> int64 [P] on the CPU."""
    if isinstance(prompt, str):
        ids = engine.codec.encode(prompt)
        if not ids:
            raise ValueError("the prompt encodes to no tokens; give non-empty text")
        return torch.tensor(ids, dtype=torch.int64)
    ids = validate.as_token_batch(prompt, "prompt")
    if ids.shape[0] != 1:
        raise ValueError(f"a request holds one prompt; got a batch of {ids.shape[0]} (submit them separately)")
    return ids[0]


def generation_request(engine, prompt, options: dict, sink, fail, every_step: bool,
                       timeout: Optional[float]) -> Request:
    """Check a generate()/stream() request. KV-cache modes run alone (see Scheduler)."""
    ids = prompt_ids(engine, prompt)
    job = engine.plan_generation(ids[None], None, **options)
    req = Request(canvas=job.canvas[0], prompt_len=job.prompt_len, blocks=job.blocks, settings=job.settings,
                  stops=job.stops, seed=job.seed, sink=sink, fail=fail, every_step=every_step,
                  deadline=_deadline(timeout))
    if job.settings.cache is not None:
        # the seed the request reports is the one it runs with (None drew one in plan_generation)
        req.exclusive = lambda r: _run_stream_alone(engine, ids, dict(options, seed=job.seed), r)
    return req


def infill_request(engine, input_ids, options: dict, sink, fail, timeout: Optional[float]) -> Request:
    """An infill() request: runs alone; its output's tokens are the whole filled sequence."""
    ids = prompt_ids(engine, input_ids)
    if not bool((ids == engine.cfg.mask_token_id).any()):
        raise ValueError(f"infill: the input holds no mask token (id {engine.cfg.mask_token_id}) to fill")
    seed = options.get("seed")
    req = Request(canvas=ids, prompt_len=0, blocks=[], settings=None, stops=[], seed=-1 if seed is None else seed,
                  sink=sink, fail=fail, deadline=_deadline(timeout))

    def run(r: Request) -> RequestOutput:
        out = engine.infill(ids[None], **options)
        tokens = out.sequences[0].tolist()
        return RequestOutput(tokens, len(tokens), _decode(engine, tokens), 0, out.nfe, out.seed, "length")
    req.exclusive = run
    return req


def _deadline(timeout: Optional[float]) -> Optional[float]:
    if timeout is None:
        return None
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return time.monotonic() + float(timeout)


def _decode(engine, tokens) -> Optional[str]:
    decode = engine.answer_decoder([])
    return None if decode is None else decode(torch.tensor([tokens]))[0]


def _run_stream_alone(engine, ids: torch.Tensor, options: dict, req: Request) -> RequestOutput:
    """A request that cannot share a batch, through Engine.stream, checked for cancellation every step."""
    answer = None
    for event in engine.stream(ids[None], every_step=True, **options):
        now = time.monotonic()
        if req.cancelled:
            raise RequestCancelledError("the request was cancelled")
        if req.expired(now):
            raise RequestTimeoutError(f"the request timed out after {now - req.submitted:.1f} s")
        if event.kind == "step":
            if req.every_step:
                req.sink(RequestEvent("step", event.block, event.tokens[0, req.prompt_len:].tolist()))
            continue
        answer = event.tokens[0]
        req.sink(RequestEvent("block", event.block, answer.tolist(), event.new_from,
                              None if event.text is None else event.text[0]))
    length = int(answer_lengths(answer[None], req.stops)[0])
    nfe = event.nfe
    return RequestOutput(answer.tolist(), length, _decode(engine, answer[:length].tolist()), req.prompt_len, nfe,
                         req.seed, "stop" if length < answer.shape[0] else "length")
