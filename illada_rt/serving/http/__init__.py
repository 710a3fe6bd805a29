"""The HTTP front end: an OpenAI-style API over one AsyncEngine (needs Starlette: illada_rt[serve]).

    app.py         the Starlette app: routes, request bodies, streaming (create_app)
    schema.py      OpenAI-style request bodies checked into engine options
    completion.py  an answer's tokens -> the completion text, whole or as stream deltas
    sse.py         server-sent events
    errors.py      exceptions -> status codes and OpenAI's error body
    disconnect.py  a client that leaves cancels its request

Nothing outside this package imports Starlette; `illada-rt serve` (cli/serve.py) imports it.
"""
from .app import create_app

__all__ = ["create_app"]
