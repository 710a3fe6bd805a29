"""The app under uvicorn, hardened against slow, idle and too many clients (`illada-rt serve`).

    server = make_server(app, ConnectionLimits(), log_level="info", graceful_timeout=30)
    server.run(sockets=[listen_socket("127.0.0.1", 8000)])

Uvicorn bounds the size of a request's headers and closes idle keep-alive connections, but
it gives a client forever to send its headers and body, and it takes every connection the
system lets it accept. GuardedProtocol (on top of uvicorn's HTTP protocol) adds:

    header_timeout   a request's headers must be in within this many seconds of the connection
                     (or of the previous response on it); else 408 and the connection closes
    body_timeout     its body within this many seconds of its headers; else 408 and close
    max_connections  a connection beyond this many open ones gets 503 (Retry-After) and is
                     closed at once, before it is read

and RateLimitedLog keeps a flood from filling the log (asyncio logs one traceback per failed
accept): per message, BURST lines per INTERVAL seconds, then a count of the ones left out.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, fields
from typing import Callable, Optional

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from .errors import RETRY_AFTER, error_body

LOGGERS = ("asyncio", "uvicorn.error", "illada_rt.serve")   # whose lines are rate-limited


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 1024

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"--{f.name.replace('_', '-')} must be a positive number, got {value!r}")


def _raw_response(status: int, reason: str, message: str, kind: str, headers: str = "") -> bytes:
    body = json.dumps(error_body(message, kind, status)).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{headers}connection: close\r\n\r\n").encode() + body


TOO_SLOW = _raw_response(408, "Request Timeout", "the request was not received in time", "timeout")
TOO_MANY = _raw_response(503, "Service Unavailable", "too many open connections; retry later", "unavailable",
                         f"retry-after: {RETRY_AFTER}\r\n")


def guarded_protocol(limits: ConnectionLimits, base: type = AutoHTTPProtocol) -> type:
    """uvicorn's HTTP protocol class `base` with the deadlines and the connection cap of limits."""

    class GuardedProtocol(base):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._deadline = None
            self._request = None            # the request cycle whose headers are in
            self._bytes = 0                 # bytes received since the deadline was set
            if len(self.connections) > limits.max_connections:
                transport.write(TOO_MANY)
                transport.close()
                return
            self._arm(limits.header_timeout)

        def data_received(self, data: bytes):
            self._bytes += len(data)
            super().data_received(data)
            self._follow()

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm(limits.header_timeout)   # the next request on this connection
                self._follow()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _follow(self):
            """A new request's headers are in: its body has body_timeout; a whole body: no deadline."""
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                return
            if cycle is not self._request:
                self._request = cycle
                self._arm(limits.body_timeout)
                self._bytes = 1              # the request has started: a timeout is answered 408
            if not cycle.more_body:
                self._disarm()

        def _arm(self, seconds: float):
            self._disarm()
            self._bytes = 0
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self):
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self):
            self._deadline = None
            if self.transport.is_closing():
                return
            cycle = self.cycle
            answering = cycle is not None and cycle.response_started and not cycle.response_complete
            if self._bytes and not answering:   # a request was started: say why it ends
                self.transport.write(TOO_SLOW)
            self.transport.close()

    GuardedProtocol.__name__ = GuardedProtocol.__qualname__ = f"Guarded{base.__name__}"
    return GuardedProtocol


class RateLimitedLog(logging.Filter):
    """At most BURST records per message template per INTERVAL seconds; the next one let through
    after a quiet spell says how many were left out."""
    BURST, INTERVAL = 5, 10.0

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.clock = clock
        self._windows = {}           # message template -> [window start, records let through, left out]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.INTERVAL:
                left_out = 0 if window is None else window[2]
                self._windows[key] = [now, 1, 0]
                if left_out:
                    record.msg = f"{record.msg} ({left_out} similar lines left out in the last {self.INTERVAL:g} s)"
                if len(self._windows) > 1000:     # forget old templates
                    self._windows = {k: w for k, w in self._windows.items() if now - w[0] < self.INTERVAL}
                return True
            if window[1] < self.BURST:
                window[1] += 1
                return True
            window[2] += 1
            return False


def rate_limit_logs(names=LOGGERS) -> RateLimitedLog:
    """Install one RateLimitedLog on each of the named loggers; returns it."""
    limiter = RateLimitedLog()
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitedLog) for f in logger.filters):
            logger.addFilter(limiter)
    return limiter


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn (it listens); errors are OSError with what failed."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must lie in [0, 65535], got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise OSError(f"cannot listen on {host}:{port}: {e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


class Server(uvicorn.Server):
    """uvicorn's server; a second SIGINT or SIGTERM while it stops calls on_second_signal(sig)
    (from the signal handler, on the event loop's thread) instead of uvicorn's forced exit,
    which would end the process under a still running engine."""

    def __init__(self, config: uvicorn.Config, on_second_signal: Optional[Callable[[int], None]] = None):
        super().__init__(config)
        self.on_second_signal = on_second_signal

    def handle_exit(self, sig, frame):
        if self.should_exit and self.on_second_signal is not None:
            self.on_second_signal(sig)
            return
        super().handle_exit(sig, frame)


def make_server(app, limits: ConnectionLimits, log_level: str = "info", graceful_timeout: Optional[float] = None,
                on_second_signal: Optional[Callable[[int], None]] = None) -> Server:
    """A uvicorn Server for app with the connection limits; run it with server.run(sockets=[...])."""
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", http=guarded_protocol(limits),
                            timeout_keep_alive=limits.keep_alive_timeout, timeout_graceful_shutdown=graceful_timeout)
    server = Server(config, on_second_signal)
    rate_limit_logs()
    return server
