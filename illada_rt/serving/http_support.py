"""HTTP plumbing shared by the routes: exceptions -> status codes, and client-disconnect races."""
from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from . import openai_schema as schema
from . import sse
from .requests import EngineClosedError, QueueFullError, RequestCancelledError, RequestTimeoutError

log = logging.getLogger("illada_rt.serve")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def error_status(exc: BaseException):
    """An exception -> (HTTP status, error type). Order matters: the engine errors subclass builtins."""
    if isinstance(exc, QueueFullError):
        return 429, "queue_full"
    if isinstance(exc, RequestTimeoutError):
        return 504, "timeout"
    if isinstance(exc, EngineClosedError):
        return 503, "unavailable"
    if isinstance(exc, RequestCancelledError):
        return 499, "cancelled"
    if isinstance(exc, schema.UnknownModelError):
        return 404, "not_found_error"
    if isinstance(exc, ValueError):
        return 400, "invalid_request_error"
    return 500, "internal_error"


def error_response(exc: BaseException) -> JSONResponse:
    status, kind = error_status(exc)
    if status == 500:
        log.exception("request failed", exc_info=exc)
    return JSONResponse(sse.error_body(str(exc) or type(exc).__name__, kind, status), status_code=status)


async def _wait_disconnect(request: Request):
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, awaitable):
    """The awaitable's result; cancels it and raises ClientGone if the client leaves first."""
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.cancelled():
        raise ClientGone()
    return task.result()


async def gather_or_cancel(awaitables):
    """gather() that cancels the others when one fails (each cancel ends an engine request)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
