"""One engine shared by many concurrent callers: an asyncio API and a thread-safe blocking one.

    aeng = AsyncEngine(Engine.from_pretrained(model_dir), max_batch_size=16)
    out = await aeng.generate("ROMEO:", gen_length=64, block_length=16, steps=64, seed=1)
    async for event in aeng.stream(prompt_ids, gen_length=64, block_length=16, steps=64):
        print(event.kind, event.new_tokens)
    await aeng.shutdown()

    seng = SyncEngine(engine)           # same, from threads: seng.generate(...), seng.stream(...)

Concurrent requests with the same sampling settings (temperature, cfg_scale, remasking,
threshold) share device batches; each gets the tokens it would get from Engine.generate
alone with the same seed (see rows.py). Options are Engine.generate's, plus `timeout`
(seconds; the request then fails with RequestTimeoutError). A full queue refuses a request
with QueueFullError; after shutdown, requests fail with EngineClosedError.
"""
from __future__ import annotations

import asyncio
import queue
from typing import Optional

from .builder import generation_request, infill_request
from .protocol import ServingEngine
from .requests import Request, RequestEvent, RequestOutput
from .scheduler import Scheduler


class _Shared:
    def __init__(self, engine: ServingEngine, max_batch_size: int, max_queue: int, request_timeout: Optional[float]):
        self.engine = engine
        self.scheduler = Scheduler(engine, max_batch_size, max_queue)
        self.request_timeout = request_timeout

    def _timeout(self, timeout: Optional[float]) -> Optional[float]:
        return self.request_timeout if timeout is None else timeout

    @property
    def closed(self) -> bool:
        """True once shutdown (or close) began: new requests fail with EngineClosedError."""
        return self.scheduler.closed

    def stats(self) -> dict:
        """Counters: requests, tokens, tokens/s, steps, batch sizes, queue depth, device memory."""
        s = self.scheduler
        return s.metrics.snapshot(s.queue_depth, s.active)

    def prometheus(self) -> str:
        """stats() in the Prometheus text format."""
        s = self.scheduler
        return s.metrics.prometheus(s.queue_depth, s.active)


class AsyncEngine(_Shared):
    def __init__(self, engine: ServingEngine, max_batch_size: int = 16, max_queue: int = 256,
                 request_timeout: Optional[float] = None):
        super().__init__(engine, max_batch_size, max_queue, request_timeout)

    def stream(self, prompt, *, every_step: bool = False, timeout: Optional[float] = None,
               **options) -> "AsyncEvents":
        """Events of one request: "block" events as blocks finish ("step" ones too with every_step),
        then "done" with the RequestOutput. Arguments are checked and the request queued now;
        leaving the iteration early cancels it."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        put = (lambda item: loop.call_soon_threadsafe(events.put_nowait, item))
        req = generation_request(self.engine, prompt, options, put, put, every_step, self._timeout(timeout))
        self.scheduler.submit(req)
        return self._events(req, events)

    async def generate(self, prompt, *, timeout: Optional[float] = None, **options) -> RequestOutput:
        """One answer (the prompt: text or token ids [P]). Cancelling the awaiting task cancels the request."""
        return await self._result(self.stream(prompt, timeout=timeout, **options))

    async def infill(self, input_ids, *, timeout: Optional[float] = None, **options) -> RequestOutput:
        """Engine.infill for one sequence with masks; runs alone in queue order. tokens: the filled sequence."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        put = (lambda item: loop.call_soon_threadsafe(events.put_nowait, item))
        req = infill_request(self.engine, input_ids, options, put, put, self._timeout(timeout))
        self.scheduler.submit(req)
        return await self._result(self._events(req, events))

    async def shutdown(self, graceful: bool = True):
        """Refuse new requests; finish (graceful) or fail with EngineClosedError every pending one."""
        await asyncio.get_running_loop().run_in_executor(None, self.scheduler.close, graceful)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.shutdown()

    @staticmethod
    def _events(req: Request, events: asyncio.Queue) -> "AsyncEvents":
        return AsyncEvents(req, events)

    @staticmethod
    async def _result(events: "AsyncEvents") -> RequestOutput:
        try:
            async for event in events:
                if event.kind == "done":
                    return event.output
        finally:
            await events.aclose()
        raise RuntimeError("the request ended without a result")  # unreachable: errors raise above


class SyncEngine(_Shared):
    """The blocking facade: safe to call from many threads at once."""

    def __init__(self, engine: ServingEngine, max_batch_size: int = 16, max_queue: int = 256,
                 request_timeout: Optional[float] = None):
        super().__init__(engine, max_batch_size, max_queue, request_timeout)

    def stream(self, prompt, *, every_step: bool = False, timeout: Optional[float] = None,
               **options) -> "Events":
        events: queue.Queue = queue.Queue()
        req = generation_request(self.engine, prompt, options, events.put, events.put, every_step,
                                 self._timeout(timeout))
        self.scheduler.submit(req)
        return self._events(req, events)

    def generate(self, prompt, *, timeout: Optional[float] = None, **options) -> RequestOutput:
        for event in self.stream(prompt, timeout=timeout, **options):
            if event.kind == "done":
                return event.output
        raise RuntimeError("the request ended without a result")

    def infill(self, input_ids, *, timeout: Optional[float] = None, **options) -> RequestOutput:
        events: queue.Queue = queue.Queue()
        req = infill_request(self.engine, input_ids, options, events.put, events.put, self._timeout(timeout))
        self.scheduler.submit(req)
        for event in self._events(req, events):
            if event.kind == "done":
                return event.output
        raise RuntimeError("the request ended without a result")

    def close(self, graceful: bool = True):
        self.scheduler.close(graceful)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _events(req: Request, events: queue.Queue) -> "Events":
        return Events(req, events)


class Events:
    """A request's events as an iterator; closing it (or dropping it) cancels an unfinished request."""

    def __init__(self, req: Request, events: queue.Queue):
        self.request, self._events, self._done = req, events, False

    def __iter__(self):
        return self

    def __next__(self) -> RequestEvent:
        if self._done:
            raise StopIteration
        item = self._events.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._done = item.kind == "done"
        return item

    def close(self):
        self._done = True
        self.request.cancel()   # no effect once the request is done

    def __del__(self):
        self.request.cancel()


class AsyncEvents:
    """The asyncio twin of Events: async iteration; aclose() or dropping it cancels the request."""

    def __init__(self, req: Request, events: asyncio.Queue):
        self.request, self._events, self._done = req, events, False

    def __aiter__(self):
        return self

    async def __anext__(self) -> RequestEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._events.get()
        except BaseException:   # the awaiting task was cancelled
            self.request.cancel()
            raise
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._done = item.kind == "done"
        return item

    async def aclose(self):
        self._done = True
        self.request.cancel()

    def __del__(self):
        self.request.cancel()
