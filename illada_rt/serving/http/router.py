"""The front end of data-parallel serving: one HTTP endpoint before M engine replicas, each an
`illada-rt serve` of its own (process, device; cli/data_parallel.py starts them).

    POST /v1/completions, /v1/chat/completions   forwarded as they are to the least-loaded live
                                                 replica (fewest requests in flight here; ties:
                                                 the lowest index), the answer streamed back
    GET  /v1/models                              the first live replica's
    GET  /health                                 every replica's state; 200 while one is up
    GET  /metrics                                every replica's metrics labelled replica="i",
                                                 plus the router's in-flight and up gauges

A replica that dies fails only the requests it held (503, or an error event where a stream had
begun) and is marked down; the others keep serving. The same request with the same seed gets
the same answer as from one engine: requests pass through unchanged.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import List, Optional

import httpx
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .app import MAX_BODY_BYTES     # the replicas' own limit: refused here before any forwarding
from .errors import error_body

HEALTH_TIMEOUT_S = 2.0


@dataclass
class Replica:
    index: int
    url: str                      # http://127.0.0.1:PORT
    process: Optional[object] = None   # subprocess.Popen where this front end started it
    in_flight: int = 0
    down: Optional[str] = None    # why it is out of service (None: serving)

    def alive(self) -> bool:
        if self.down is None and self.process is not None and self.process.poll() is not None:
            self.down = f"its process exited (code {self.process.returncode})"
        return self.down is None


def _error(status: int, message: str, kind: str, retry_after: Optional[int] = None) -> JSONResponse:
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return JSONResponse(error_body(message, kind, status), status_code=status, headers=headers)


@dataclass
class Router:
    replicas: List[Replica]
    client: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=None))

    def pick(self) -> Optional[Replica]:
        live = [r for r in self.replicas if r.alive()]
        return min(live, key=lambda r: (r.in_flight, r.index)) if live else None

    async def forward(self, request: Request) -> Response:
        body = b""
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return _error(413, f"request body over {MAX_BODY_BYTES} bytes", "invalid_request_error")
        except ClientDisconnect:          # gone before its request was in: nothing to forward
            return _error(400, "the client left before its request was complete", "invalid_request_error")
        replica = self.pick()
        if replica is None:
            return _error(503, "no replica is serving", "unavailable", retry_after=5)
        replica.in_flight += 1
        try:
            upstream = await self.client.send(
                self.client.build_request(request.method, replica.url + request.url.path, content=body,
                                          headers={"content-type": request.headers.get("content-type",
                                                                                       "application/json")}),
                stream=True)
        except httpx.HTTPError as e:
            replica.in_flight -= 1
            replica.alive()
            replica.down = replica.down or f"it stopped answering ({type(e).__name__})"
            return _error(503, f"replica {replica.index} failed: {replica.down}", "unavailable", retry_after=1)

        async def relay():
            try:
                async for chunk in upstream.aiter_bytes():    # decoded: no content-encoding passes on
                    yield chunk
            except httpx.HTTPError as e:        # the replica died mid-answer: say so in the stream
                replica.alive()
                replica.down = replica.down or f"it stopped answering ({type(e).__name__})"
                body = error_body(f"replica {replica.index} failed: {replica.down}", "unavailable", 503)
                yield f"data: {json.dumps(body)}\n\n".encode()
            finally:
                replica.in_flight -= 1
                await upstream.aclose()

        headers = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "retry-after",
                                                                               "cache-control")}
        return StreamingResponse(relay(), status_code=upstream.status_code, headers=headers)

    async def _get(self, replica: Replica, path: str) -> Optional[httpx.Response]:
        if not replica.alive():
            return None
        try:
            return await self.client.get(replica.url + path, timeout=HEALTH_TIMEOUT_S)
        except httpx.HTTPError:
            return None

    async def models(self, request: Request) -> Response:
        for replica in self.replicas:
            answer = await self._get(replica, "/v1/models")
            if answer is not None and answer.status_code == 200:
                return Response(answer.content, media_type="application/json")
        return _error(503, "no replica is serving", "unavailable", retry_after=5)

    async def health(self, request: Request) -> Response:
        answers = await asyncio.gather(*(self._get(r, "/health") for r in self.replicas))
        states = []
        for replica, answer in zip(self.replicas, answers):
            ok = answer is not None and answer.status_code == 200
            states.append({"replica": replica.index, "status": "ok" if ok else "down",
                           "reason": None if ok else (replica.down or "no answer to /health"),
                           "in_flight": replica.in_flight})
        up = sum(s["status"] == "ok" for s in states)
        status = "ok" if up == len(states) else "degraded" if up else "down"
        return JSONResponse({"status": status, "replicas": states}, status_code=200 if up else 503)

    async def metrics(self, request: Request) -> Response:
        answers = await asyncio.gather(*(self._get(r, "/metrics") for r in self.replicas))
        lines, seen = [], set()
        for replica, answer in zip(self.replicas, answers):
            if answer is None or answer.status_code != 200:
                continue
            for line in answer.text.splitlines():
                if line.startswith("#"):
                    if line not in seen:
                        seen.add(line)
                        lines.append(line)
                elif line.strip():
                    lines.append(_labelled(line, replica.index))
        lines += ["# HELP illada_rt_replica_up 1 while the replica serves", "# TYPE illada_rt_replica_up gauge"]
        lines += [f'illada_rt_replica_up{{replica="{r.index}"}} {int(r.alive())}' for r in self.replicas]
        lines += ["# HELP illada_rt_router_in_flight requests the router holds open per replica",
                  "# TYPE illada_rt_router_in_flight gauge"]
        lines += [f'illada_rt_router_in_flight{{replica="{r.index}"}} {r.in_flight}' for r in self.replicas]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


def _labelled(sample: str, index: int) -> str:
    """A Prometheus sample line with replica="index" added to its labels."""
    name_labels, _, value = sample.rpartition(" ")
    if name_labels.endswith("}"):
        return f'{name_labels[:-1]},replica="{index}"}} {value}'
    return f'{name_labels}{{replica="{index}"}} {value}'


def create_router(replicas: List[Replica], client: Optional[httpx.AsyncClient] = None) -> Starlette:
    """The front end's app over replicas (client: how it reaches them; default a plain AsyncClient)."""
    router = Router(replicas) if client is None else Router(replicas, client)
    routes = [Route("/v1/completions", router.forward, methods=["POST"]),
              Route("/v1/chat/completions", router.forward, methods=["POST"]),
              Route("/v1/models", router.models, methods=["GET"]),
              Route("/health", router.health, methods=["GET"]),
              Route("/metrics", router.metrics, methods=["GET"])]
    app = Starlette(routes=routes)
    app.state.router = router
    return app
