"""An OpenAI-style API over one AsyncEngine, as a Starlette app.

    app = create_app(AsyncEngine(Engine.from_pretrained(model_dir)), "demo_model")
    uvicorn.run(app, host="127.0.0.1", port=8000)       # or: illada-rt serve --model DIR

Routes: POST /v1/completions, POST /v1/chat/completions (both stream with "stream": true),
GET /v1/models, GET /health, GET /metrics (Prometheus text). Request fields are described
in schema.py, the completion's cuts (stop tokens, max_tokens, stop strings) in
completion.py, the limits on what one request may cost in limits.py. Errors answer
{"error": {"message", "type", "code"}}: 400 for a bad request (the rule or limit named),
404 for an unknown route or model, 413 for a body over MAX_BODY_BYTES, 429 when the queue
is full, 503 when shutting down, 504 on timeout, 500 for anything else; none of them stops
the server; 429 and 503 carry Retry-After. A client that disconnects cancels its request.

The event loop does no heavy work: tokenization (and chat templates, masked texts) runs in
worker threads (prompts.py), after the limits that the request's own numbers can check.
Starlette is an optional dependency (`pip install "illada_rt[serve]"`), imported only in
this package.
"""
from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import List, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..async_engine import AsyncEngine
from ..requests import QueueFullError
from . import schema, sse
from .completion import CompletionText, DeltaStream
from .disconnect import ClientGone, StopSignal, gather_or_cancel, unless_disconnected
from .errors import error_body, error_response, error_status, retry_headers
from .limits import RequestLimits
from .prompts import PromptEncoder

MAX_BODY_BYTES = 1 << 20
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Api:
    def __init__(self, aeng: AsyncEngine, model_name: str, limits: RequestLimits):
        self.aeng, self.engine, self.model_name, self.limits = aeng, aeng.engine, model_name, limits
        self.closing = False
        self.stopping = StopSignal()       # set by stop_now(): running requests end with 503
        self.in_flight = 0                 # HTTP requests being answered (streams until their end)
        self.created = int(time.time())
        self.prompts = PromptEncoder(aeng.engine, model_name, limits)

    def stop_now(self):
        """Refuse new requests and end the running ones with 503 (on the event loop's thread)."""
        self.closing = True
        self.stopping.set()

    # ------------------------------------------------------------------ helpers

    def _cutter(self, params: schema.GenerationParams) -> CompletionText:
        stops = params.options.get("stop_token_ids")
        if stops is None:
            eos = self.engine.cfg.eos_token_id
            stops = [] if eos is None else [eos]
        return CompletionText(self.prompts.codec, stops, params.max_tokens, params.stop)

    def _timeout(self, params: schema.GenerationParams) -> Optional[float]:
        """The request's timeout, never longer than the server's (--request-timeout)."""
        limit = self.aeng.request_timeout
        if params.timeout is None or limit is None:
            return params.timeout if limit is None else limit
        return min(params.timeout, limit)

    def _check_room(self, count: int):
        """429 before any work when the queue cannot take all of a request's prompts."""
        scheduler = self.aeng.scheduler
        if count > 1 and scheduler.queue_depth + count > scheduler.max_queue:
            raise QueueFullError(f"the request queue cannot take {count} more prompts "
                                 f"({scheduler.queue_depth} of {scheduler.max_queue} waiting); retry later")

    def _head(self, kind: str) -> dict:
        prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                "model": self.model_name}

    @staticmethod
    def _choice(chat: bool, index: int, text: str, reason, token_ids, delta: bool = False, **extra) -> dict:
        if chat:
            body = {"delta": {"content": text}} if delta else {"message": {"role": "assistant", "content": text}}
        else:
            body = {"text": text}
        return {"index": index, **body, "finish_reason": reason, "token_ids": token_ids, **extra}

    @staticmethod
    def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    async def _body(self, request: Request) -> dict:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise _TooLarge(f"the request body exceeds {MAX_BODY_BYTES} bytes")
        raw = bytearray()
        try:
            async for chunk in request.stream():       # stop reading once the bound is passed
                raw += chunk
                if len(raw) > MAX_BODY_BYTES:
                    raise _TooLarge(f"the request body exceeds {MAX_BODY_BYTES} bytes")
        except ClientDisconnect:
            raise ClientGone() from None
        try:
            body = json.loads(bytes(raw), parse_constant=_reject_constant)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"the request body is not valid JSON ({_short(e)})") from None
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object")
        schema.check_unicode(body)
        schema.check_model(body, self.model_name)
        return body

    # ------------------------------------------------------------------ routes

    async def completions(self, request: Request) -> Response:
        params = schema.completion_request(await self._body(request), self.limits)
        if params.infill is not None:
            return await self._infill(request, params)
        self._check_room(len(params.prompts))      # before any tokenizing
        return await self._generate(request, params, await self.prompts.encode(params), chat=False)

    async def chat_completions(self, request: Request) -> Response:
        body = await self._body(request)
        messages = schema.chat_messages(body)
        params = schema.generation_params(body, [messages], self.limits)
        ids = await self.prompts.encode_chat(messages, params)
        return await self._generate(request, params, [ids], chat=True)

    async def _generate(self, request: Request, params: schema.GenerationParams, prompts: List, chat: bool):
        if params.stream:
            return await self._stream(request, params, prompts[0], chat)
        runs = [self.aeng.generate(p, timeout=self._timeout(params), **params.options_for(i)) for i, p in enumerate(prompts)]
        outs = await unless_disconnected(request, gather_or_cancel(runs), self.stopping)
        cutter = self._cutter(params)
        choices, completion_tokens = [], 0
        for i, out in enumerate(outs):
            c = cutter.render(out.tokens, final=True)
            completion_tokens += len(c.token_ids)
            choices.append(self._choice(chat, i, c.text, c.finish_reason, c.token_ids, seed=out.seed, nfe=out.nfe))
        prompt_tokens = sum(out.prompt_tokens for out in outs)
        return JSONResponse({**self._head("chat.completion" if chat else "text_completion"), "choices": choices,
                             "usage": self._usage(prompt_tokens, completion_tokens)})

    async def _stream(self, request: Request, params: schema.GenerationParams, prompt, chat: bool):
        events = self.aeng.stream(prompt, timeout=self._timeout(params), **params.options_for(0))
        try:   # the first block (or an error) before any header, so early errors get their status code
            first = await unless_disconnected(request, events.__anext__(), self.stopping)
        except BaseException:
            await events.aclose()
            raise
        head = self._head("chat.completion.chunk" if chat else "text_completion")
        deltas = DeltaStream(self._cutter(params))
        prompt_tokens = len(prompt) if isinstance(prompt, list) else None

        def chunk(text, reason, token_ids, **extra):
            return sse.event({**head, "choices": [self._choice(chat, 0, text, reason, token_ids, delta=True,
                                                                 **extra)]})

        async def body():
            event = first
            try:
                if chat:
                    yield sse.event({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                          "finish_reason": None}]})
                while True:
                    done = event.kind == "done"
                    d = deltas.update(event.output.tokens if done else event.tokens, final=done)
                    if d.text or d.token_ids or d.finish_reason:
                        extra = dict(seed=event.output.seed, nfe=event.output.nfe) if done else {}
                        yield chunk(d.text, d.finish_reason, d.token_ids, **extra)
                    if done:
                        break
                    event = await unless_disconnected(request, events.__anext__(), self.stopping)
                if params.include_usage:
                    usage = self._usage(event.output.prompt_tokens or prompt_tokens or 0, deltas.tokens)
                    yield sse.event({**head, "choices": [], "usage": usage})
                yield sse.DONE
            except ClientGone:
                return
            except Exception as e:   # headers are sent: the error goes into the stream
                status, kind = error_status(e)
                yield sse.event(error_body(str(e) or type(e).__name__, kind, status))
            finally:
                await events.aclose()   # cancels the request if the client left early

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _infill(self, request: Request, params: schema.GenerationParams) -> Response:
        codec, cfg = self.prompts.text_codec(), self.engine.cfg
        ids = await self.prompts.encode_infill(params)
        out = await unless_disconnected(request, self.aeng.infill(ids, timeout=self._timeout(params), **params.options),
                                        self.stopping)
        filled = int((ids == cfg.mask_token_id).sum())
        text = codec.decode(out.tokens)
        usage = self._usage(ids.shape[0], filled)
        if not params.stream:
            return JSONResponse({**self._head("text_completion"), "usage": usage, "choices": [
                self._choice(False, 0, text, "length", out.tokens, seed=out.seed, nfe=out.nfe)]})
        head = self._head("text_completion")
        chunks = [sse.event({**head, "choices": [self._choice(False, 0, text, "length", out.tokens, seed=out.seed,
                                                              nfe=out.nfe)]})]
        if params.include_usage:
            chunks.append(sse.event({**head, "choices": [], "usage": usage}))
        return StreamingResponse(iter(chunks + [sse.DONE]), media_type="text/event-stream")

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.model_name, "object": "model",
                                                         "created": self.created, "owned_by": "illada_rt"}]})

    async def health(self, request: Request) -> Response:
        if self.closing:
            return JSONResponse({"status": "shutting down"}, status_code=503, headers=retry_headers(503))
        return JSONResponse({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.aeng.prometheus(), media_type=PROMETHEUS_TYPE)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 200 else text[:197] + "..."


class _TooLarge(ValueError):
    pass


def _guarded(handler):
    """Every exception becomes a JSON error response; the server goes on."""
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except _TooLarge as e:
            return JSONResponse(error_body(str(e), "invalid_request_error", 413), status_code=413)
        except ClientGone:
            return Response(status_code=499)
        except Exception as e:
            try:
                return error_response(e)     # logs 500s with their traceback
            finally:
                _forget_tracebacks(e)
    return endpoint


def _forget_tracebacks(exc: Optional[BaseException]):
    """Drop the tracebacks of an answered error: their frames would otherwise sit in reference
    cycles (a worker thread's future holds the error that holds the frame that holds the future)
    with the request's buffers until a full garbage collection."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


async def _http_error(request: Request, exc: HTTPException) -> Response:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(error_body(message, kind, exc.status_code), status_code=exc.status_code)


class _InFlight:
    """ASGI middleware counting the HTTP requests being answered (api.in_flight), streams included."""

    def __init__(self, app, api: _Api):
        self.app, self.api = app, api

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.api.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.api.in_flight -= 1


def create_app(async_engine: AsyncEngine, model_name: Optional[str] = None,
               limits: Optional[RequestLimits] = None) -> Starlette:
    """A Starlette app serving async_engine; its lifespan's end shuts the engine down gracefully.
    limits: what one request may cost (default RequestLimits())."""
    api = _Api(async_engine, model_name or "illada", limits or RequestLimits())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        api.closing = True
        await async_engine.shutdown(graceful=True)

    routes = [Route("/v1/completions", _guarded(api.completions), methods=["POST"]),
              Route("/v1/chat/completions", _guarded(api.chat_completions), methods=["POST"]),
              Route("/v1/models", _guarded(api.models), methods=["GET"]),
              Route("/health", _guarded(api.health), methods=["GET"]),
              Route("/metrics", _guarded(api.metrics), methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error},
                    middleware=[Middleware(_InFlight, api=api)])
    app.state.api = api
    return app
