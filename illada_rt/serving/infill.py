"""An InfillRequest served: Engine.infill's plan on its one sequence, while nothing else runs.

It runs step by step (Engine.denoise_steps, the eager loop Engine.infill runs for an infill
too), and between two steps a cancelled or expired request stops, so an infill honours its
timeout, its client leaving and a shutdown like any other request.
"""
from __future__ import annotations

import time

import torch

from ..decoding.infill import plan_infill
from .protocol import ServingEngine
from .requests import InfillRequest, RequestCancelledError, RequestOutput, RequestTimeoutError


def run_infill(engine: ServingEngine, request: InfillRequest) -> RequestOutput:
    """The filled sequence (tokens: all of it, answer_length its length); errors raise, a cancelled
    request raises RequestCancelledError and an expired one RequestTimeoutError."""
    _check_alive(request)
    options = dict(request.options)     # infill()'s keyword arguments
    plan = plan_infill(engine.cfg, engine.device, request.input_ids[None], options.pop("attention_mask", None),
                       **options)
    nfe = 0
    for progress in engine.denoise_steps(plan):
        nfe = progress.nfe
        _check_alive(request)
    tokens = plan.canvas[0].tolist()
    decode = engine.text.answer_decoder([])
    text = None if decode is None else decode(torch.tensor([tokens]))[0]
    return RequestOutput(tokens, len(tokens), text, 0, nfe, plan.seed, "length")


def _check_alive(request: InfillRequest):
    if request.cancelled:
        raise RequestCancelledError("the request was cancelled")
    now = time.monotonic()
    if request.expired(now):
        raise RequestTimeoutError(f"the request timed out after {now - request.submitted:.1f} s")
