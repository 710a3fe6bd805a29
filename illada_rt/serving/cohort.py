"""KV-cache requests (Fast-dLLM's prefix and dual caches) served together as a cohort.

A block cache is refreshed for the whole batch at each block start, so rows of one cached
batch must sit on the same block: a cohort starts together and runs to its end, and nobody
joins it midway. Requests whose cohort keys are equal (same cache mode, lengths, steps and
sampling settings) are left-padded to a common prompt width, which lines their answers and
blocks up, and run as one batched generation with each request's own seed. Padding does not
change a row's result (RoPE scores depend only on position differences, padding is masked
from the keys, the remask noise is keyed by the row's own positions), and with the fixed
schedule every row takes the steps it would alone, so each request gets its alone tokens.
Threshold decoding takes as many steps as the slowest row needs, which moves the step
counters of the random numbers; such cohorts are formed only where no random numbers are
drawn (temperature 0, low-confidence remasking).
"""
from __future__ import annotations

import time
from typing import List, Optional, Union

import torch

from ..decoding.padding import left_pad, pad_id
from ..decoding.step import answer_lengths
from .protocol import ServingEngine
from .requests import (CohortRequest, RequestCancelledError, RequestEvent, RequestOutput,
                       RequestTimeoutError)

Result = Union[RequestOutput, BaseException]


def cohort_key(options: dict, settings) -> Optional[tuple]:
    """Requests with equal keys may share a cached batch; None: this one runs by itself."""
    if settings.threshold is not None and (settings.temperature > 0 or settings.remasking != "low_confidence"):
        return None
    return (settings.cache, options.get("gen_length", 128), options.get("block_length", 32),
            options.get("steps", 128), settings.temperature, settings.remasking, settings.threshold,
            tuple(settings.stop_token_ids))


def run_cohort(engine: ServingEngine, requests: List[CohortRequest]) -> List[Result]:
    """Generate for every request of the cohort in one batch; block (and step) events go to each
    request's sink as they come. Returns each request's output, or the error that ended it."""
    n = len(requests)
    ids, mask = left_pad([r.prompt for r in requests], pad_id(engine.cfg))
    options = dict(requests[0].options, seed=0)
    plan = engine.plan_generation(ids, None if bool(mask.all()) else mask, **options)
    plan.seeds.copy_(torch.tensor([r.seed for r in requests]))       # each request's own seed
    gen_length = plan.canvas.shape[1] - plan.prompt_len
    decoders = [engine.text.answer_decoder(r.stops) for r in requests]   # texts end at each one's own stops
    results: List[Optional[Result]] = [None] * n
    emitted = [0] * n
    progress = engine.denoise_steps(plan)
    for event in progress:
        _check_alive(requests, results)
        if all(res is not None for res in results):
            break
        answers = plan.canvas[:, plan.prompt_len:]
        if event.kind == "step":
            if any(r.every_step for r in requests):
                rows = answers.cpu()
                for b, r in enumerate(requests):
                    if results[b] is None and r.every_step:
                        r.sink(RequestEvent(kind="step", block=event.block, tokens=rows[b].tolist(), nfe=event.nfe))
            continue
        upto = gen_length if event.last else (event.block + 1) * plan.block_length
        rows = answers.cpu()
        for b, r in enumerate(requests):
            if results[b] is not None:
                continue
            decode = decoders[b]
            lengths = answer_lengths(rows[b:b + 1, :upto], r.stops)
            over = event.last or (len(r.settings.stop_token_ids) > 0 and int(lengths[0]) < upto)
            end = gen_length if over else upto
            text = None if decode is None else decode(rows[b:b + 1, :end])[0]
            r.sink(RequestEvent(kind="block", block=event.block, tokens=rows[b, :end].tolist(), new_from=emitted[b],
                                text=text, nfe=event.nfe))
            emitted[b] = end
            if over:
                length = int(answer_lengths(rows[b:b + 1], r.stops)[0])
                results[b] = RequestOutput(rows[b].tolist(), length,
                                           None if decode is None else decode(rows[b:b + 1, :length])[0],
                                           r.prompt_len, event.nfe, r.seed,
                                           "stop" if length < gen_length else "length")
    return [res if res is not None else RuntimeError("the cohort ended early") for res in results]


def _check_alive(requests: List[CohortRequest], results: List[Optional[Result]]):
    now = time.monotonic()
    for b, r in enumerate(requests):
        if results[b] is None and r.cancelled:
            results[b] = RequestCancelledError("the request was cancelled")
        elif results[b] is None and r.expired(now):
            results[b] = RequestTimeoutError(f"the request timed out after {now - r.submitted:.1f} s")
