"""Turn a caller's prompt and options into a checked Request (errors raise here, in the caller)."""
from __future__ import annotations

import time
from typing import Optional

import torch

from ..decoding import validate
from .cohort import cohort_key, run_cohort
from .requests import Request, RequestOutput


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
    """Check a generate()/stream() request. KV-cache modes run in cohorts (see cohort.py)."""
    ids = prompt_ids(engine, prompt)
    job = engine.plan_generation(ids[None], None, **options)
    req = Request(canvas=job.canvas[0], prompt_len=job.prompt_len, blocks=job.blocks, settings=job.settings,
                  stops=job.stops, seed=job.seed, sink=sink, fail=fail, every_step=every_step,
                  deadline=_deadline(timeout))
    if job.settings.cache is not None:   # a block cache: served in a cohort (cohort.py)
        req.prompt, req.options = ids, dict(options)
        req.cohort_key = cohort_key(options, job.settings)
        req.exclusive = lambda requests: run_cohort(engine, requests)
    return req


def infill_request(engine, input_ids, options: dict, sink, fail, timeout: Optional[float]) -> Request:
    """An infill() request: runs alone; its output's tokens are the whole filled sequence."""
    ids = prompt_ids(engine, input_ids)
    if not bool((ids == engine.cfg.mask_token_id).any()):
        raise ValueError(f"infill: the input holds no mask token (id {engine.cfg.mask_token_id}) to fill")
    seed = options.get("seed")
    req = Request(canvas=ids, prompt_len=0, blocks=[], settings=None, stops=[], seed=-1 if seed is None else seed,
                  sink=sink, fail=fail, deadline=_deadline(timeout))

    def run(requests) -> list:
        out = engine.infill(ids[None], **options)
        tokens = out.sequences[0].tolist()
        return [RequestOutput(tokens, len(tokens), _decode(engine, tokens), 0, out.nfe, out.seed, "length")]
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
