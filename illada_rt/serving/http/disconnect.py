"""Client disconnects: an engine call raced against the client leaving (and the server stopping
at once), either of which cancels the call."""
from __future__ import annotations

import asyncio
import contextlib
from typing import Optional

from starlette.requests import Request

from ..requests import EngineClosedError


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class StopSignal:
    """Set once (on the event loop's thread); then every wait() returns. Bound to no loop: an app
    may be served by several loops one after the other (TestClient makes one per with-block)."""

    def __init__(self):
        self.is_set = False
        self._waiters = set()

    def set(self):
        self.is_set = True
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_result(None)

    async def wait(self):
        if self.is_set:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        try:
            await fut
        finally:
            self._waiters.discard(fut)


async def _wait_disconnect(request: Request):
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, awaitable, stopping: Optional[StopSignal] = None):
    """The awaitable's result; cancels it and raises ClientGone if the client leaves first, or
    EngineClosedError if `stopping` is set first (the server stops at once)."""
    task = asyncio.ensure_future(awaitable)
    watchers = [asyncio.ensure_future(_wait_disconnect(request))]
    if stopping is not None:
        watchers.append(asyncio.ensure_future(stopping.wait()))
    try:
        await asyncio.wait({task, *watchers}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if stopping is not None and stopping.is_set:
                raise EngineClosedError("the server is stopping at once; the request was not finished")
            raise ClientGone()
        if task.cancelled():
            raise ClientGone()
        return task.result()
    finally:
        for w in watchers:
            w.cancel()
        if not task.done():      # the handler itself was cancelled
            task.cancel()
        # an error raised above keeps this frame alive in its traceback: drop the task (and with it the
        # error's own traceback) so that no reference cycle holds the request's buffers until a full GC
        task = watchers = None


async def gather_or_cancel(awaitables):
    """gather() that cancels the others when one fails (each cancel ends an engine request)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        tasks = None
