"""The HTTP front end: an OpenAI-style API over one AsyncEngine (needs Starlette: illada_rt[serve]).

    app.py         the Starlette app: routes, request bodies, streaming (create_app)
    schema.py      OpenAI-style request bodies checked into engine options
    limits.py      what one request may cost (RequestLimits: the serve flags, 400 naming them)
    prompts.py     texts -> token ids in worker threads, checked against the limits
    completion.py  an answer's tokens -> the completion text, whole or as stream deltas
    sse.py         server-sent events
    errors.py      exceptions -> status codes and OpenAI's error body
    disconnect.py  a client that leaves (or the server stopping at once) cancels its request
    server.py      the app under uvicorn: header/body deadlines, a connection cap, rate-limited logs

Nothing outside this package imports Starlette or uvicorn; `illada-rt serve` (cli/serve.py) imports it.
"""
from .app import create_app

__all__ = ["create_app"]
