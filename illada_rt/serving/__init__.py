"""Serving: one engine shared by concurrent callers (AsyncEngine, SyncEngine), batched on the device.

    requests.py      the kinds of work (RowRequest, CohortRequest, InfillRequest), outputs, events, errors
    protocol.py      ServingEngine: the members of an Engine that serving uses
    builder.py       a caller's prompt and options -> a checked request of its kind
    scheduler.py     the one thread that admits requests and runs them, matching on their kind
    rows.py          the row batch's denoising step (RowRequest)
    cohort.py        KV-cache requests run together as a cohort (CohortRequest)
    infill.py        an infill run alone (InfillRequest)
    metrics.py       counters and their Prometheus text
    async_engine.py  AsyncEngine (asyncio) and SyncEngine (threads) over one scheduler
    http/            the OpenAI-style HTTP front end (Starlette; imported only by `illada-rt serve`)
"""
from .async_engine import AsyncEngine, SyncEngine
from .protocol import ServingEngine
from .requests import (EngineClosedError, QueueFullError, RequestCancelledError, RequestEvent, RequestOutput,
                       RequestTimeoutError)

__all__ = ["AsyncEngine", "SyncEngine", "ServingEngine", "RequestOutput", "RequestEvent", "QueueFullError",
           "EngineClosedError", "RequestTimeoutError", "RequestCancelledError"]
