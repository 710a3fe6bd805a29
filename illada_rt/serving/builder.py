"""Turn a caller's prompt and options into a checked request of its kind (errors raise here, in the caller)."""
from __future__ import annotations

import time
from typing import Optional, Union

import torch

from ..decoding import validate
from .cohort import cohort_key
from .protocol import ServingEngine
from .requests import CohortRequest, InfillRequest, RowRequest


def prompt_ids(engine: ServingEngine, prompt) -> torch.Tensor:
    """A text (encoded with the checkpoint's tokenizer) or token ids -> int64 [P] on the CPU."""
    if isinstance(prompt, str):
        ids = engine.text.codec.encode(prompt)
        if not ids:
            raise ValueError("the prompt encodes to no tokens; give non-empty text")
        return torch.tensor(ids, dtype=torch.int64)
    ids = validate.as_token_batch(prompt, "prompt")
    if ids.shape[0] != 1:
        raise ValueError(f"a request holds one prompt; got a batch of {ids.shape[0]} (submit them separately)")
    return ids[0]


def generation_request(engine: ServingEngine, prompt, options: dict, sink, fail, every_step: bool,
                       timeout: Optional[float]) -> Union[RowRequest, CohortRequest]:
    """Check a generate()/stream() request: a row of the batch, or with a block KV cache a cohort member."""
    ids = prompt_ids(engine, prompt)
    plan = engine.plan_generation(ids[None], None, **options)
    common = dict(prompt_len=plan.prompt_len, settings=plan.settings, stops=plan.stops, seed=plan.seed,
                  sink=sink, fail=fail, every_step=every_step, deadline=_deadline(timeout))
    if plan.settings.cache is None:
        return RowRequest(canvas=plan.canvas[0], blocks=plan.blocks, **common)
    return CohortRequest(prompt=ids, options=dict(options), key=cohort_key(options, plan.settings), **common)


def infill_request(engine: ServingEngine, input_ids, options: dict, sink, fail,
                   timeout: Optional[float]) -> InfillRequest:
    """Check an infill() request (its options are checked when it runs, by Engine.infill)."""
    ids = prompt_ids(engine, input_ids)
    mask_id = engine.cfg.mask_token_id
    if not bool((ids == mask_id).any()):
        raise ValueError(f"infill: the input holds no mask token (id {mask_id}) to fill")
    seed = options.get("seed")
    return InfillRequest(input_ids=ids, options=dict(options), seed=-1 if seed is None else seed, sink=sink,
                         fail=fail, deadline=_deadline(timeout))


def _deadline(timeout: Optional[float]) -> Optional[float]:
    if timeout is None:
        return None
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return time.monotonic() + float(timeout)
