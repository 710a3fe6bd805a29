"""Client disconnects: an engine call raced against the client leaving, which cancels the call."""
from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


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
