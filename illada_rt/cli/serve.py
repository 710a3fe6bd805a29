"""`illada-rt serve`: the OpenAI-style HTTP server (serving/http/) under uvicorn.

    illada-rt serve --model DIR [--host 127.0.0.1] [--port 8000] [--max-batch-size 16] ...

SIGINT or SIGTERM stops it gracefully: no new connections, running requests finish,
then the engine shuts down; the process exits with status 0. A second signal while it stops
stops it at once: running requests are answered 503, and the process exits with 128 + the
signal's number (130 for Ctrl-C) without waiting for the engine (os._exit: the scheduler
thread may be inside a compiled kernel, which must not see the interpreter finalize). Every
bad argument is one line and status 2, before the model loads. Needs the optional extra
`pip install "illada_rt[serve]"` (Starlette, uvicorn, httpx), imported only when the command runs.

--tensor-parallel N shards the engine over N ranks (parallel/); under torchrun, rank 0 serves
HTTP and the other ranks follow it. --data-parallel M runs M such engines, each an `illada-rt
serve` process of its own on a loopback port, behind a front end on --host/--port
(serving/http/router.py, cli/data_parallel.py).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import os
import resource
import signal
import sys
import threading
import time
from typing import Optional

import torch

from ..config import DEMO_MODEL_DIR
from ..engine import Engine
from ..serving import AsyncEngine
from ..parallel.group import launched_by_torchrun
from .options import KERNELS_HELP

MISSING_EXTRA = 'the HTTP server needs Starlette, uvicorn and httpx: pip install "illada_rt[serve]"'
HARD_STOP_SECONDS = 1.0     # after a second signal: how long running requests get to be told, at most
FDS_KEPT = 64               # file descriptors kept free of connections (model files, logs, the engine)
MAX_CONNECTIONS = 1024


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve a checkpoint over HTTP (OpenAI-style API)")
    p.add_argument("--model", default=DEMO_MODEL_DIR, help="checkpoint directory (default: the bundled demo model)")
    p.add_argument("--served-model-name", default=None, help="the model's name in the API (default: the folder name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--device", default="cpu", help='"cpu" or "cuda[:N]"')
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--kernels", default=None, help=KERNELS_HELP)
    p.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                   help="ranks each engine is sharded over (one process each; on CUDA one GPU each; default 1)")
    p.add_argument("--data-parallel", type=int, default=1, metavar="M",
                   help="engine replicas behind this one endpoint, each a process (and N GPUs) of its own; "
                        "a request goes to the least-loaded one (default 1)")
    p.add_argument("--max-batch-size", type=int, default=16, help="rows per batched denoising step (default 16)")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429 (default 256)")
    p.add_argument("--request-timeout", type=float, default=None,
                   help="seconds before a request fails with 504 (default: none)")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds to let open connections finish on shutdown (default 30)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    limits = p.add_argument_group("what one request may cost (over a limit: 400 naming it)")
    limits.add_argument("--max-prompts-per-request", type=int, default=16, help="prompts in one request (default 16)")
    limits.add_argument("--max-gen-length", type=int, default=1024, help="answer tokens per prompt (default 1024)")
    limits.add_argument("--max-steps", type=int, default=1024, help="denoising steps per prompt (default 1024)")
    limits.add_argument("--max-prompt-tokens", type=int, default=4096, help="tokens of one prompt (default 4096)")
    limits.add_argument("--max-request-tokens", type=int, default=16384,
                        help="prompt tokens + gen_length over all prompts of a request (default 16384)")
    conns = p.add_argument_group("connections")
    conns.add_argument("--max-connections", type=int, default=None,
                       help=f"open connections; more get 503 and are closed (default {MAX_CONNECTIONS}, "
                            "or fewer if the open-file limit is lower)")
    conns.add_argument("--header-timeout", type=float, default=10.0,
                       help="seconds to receive a request's headers, else 408 (default 10)")
    conns.add_argument("--body-timeout", type=float, default=30.0,
                       help="seconds to receive a request's body after its headers, else 408 (default 30)")
    conns.add_argument("--keep-alive-timeout", type=float, default=5.0,
                       help="seconds an idle keep-alive connection stays open (default 5)")
    p.set_defaults(run=run)
    return p


def _import_stack():
    try:
        importlib.import_module("starlette")
        importlib.import_module("httpx")      # the data-parallel front end's client
        import uvicorn
    except ImportError:
        raise RuntimeError(MISSING_EXTRA) from None
    return uvicorn


def _check_args(args):
    """Every numeric argument, before anything loads (ValueError: one line, status 2)."""
    from ..serving.http.limits import RequestLimits
    from ..serving.http.server import ConnectionLimits

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must lie in [0, 65535], got {args.port}")
    for name in ("max_batch_size", "max_queue", "tensor_parallel", "data_parallel"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("request_timeout", "graceful_timeout"):
        value = getattr(args, name)
        if value is not None and not 0 < value < float("inf"):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {value}")
    limits = RequestLimits(args.max_prompts_per_request, args.max_gen_length, args.max_steps,
                           args.max_prompt_tokens, args.max_request_tokens)
    if args.max_connections is not None and args.max_connections < 1:
        raise ValueError(f"--max-connections must be at least 1, got {args.max_connections}")
    conns = ConnectionLimits(args.header_timeout, args.body_timeout, args.keep_alive_timeout,
                             args.max_connections or MAX_CONNECTIONS)
    return limits, conns


def _fit_connections(wanted: Optional[int]) -> int:
    """--max-connections (None: MAX_CONNECTIONS), below the file descriptors the process may open
    (raising its soft limit to the hard one first), so that a flood of connections never starves
    accept() or the engine of descriptors; an explicit value lowered says so in one line."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    fit = (wanted or MAX_CONNECTIONS) if soft == resource.RLIM_INFINITY \
        else max(1, min(wanted or MAX_CONNECTIONS, soft - FDS_KEPT))
    if wanted is not None and fit < wanted:
        print(f"illada-rt: --max-connections {wanted} lowered to {fit} (open file limit {soft})",
              file=sys.stderr, flush=True)
    return fit


class _HardStop:
    """A second signal: tell the running requests (503), then os._exit(128 + signal) within
    HARD_STOP_SECONDS, whatever the event loop or the engine's thread is doing."""

    def __init__(self, app):
        self.api = app.state.api
        self.status: Optional[int] = None     # set once a second signal came

    def __call__(self, sig: int):   # in the signal handler, on the event loop's thread
        if self.status is not None:
            return
        self.status = 128 + int(sig)
        print(f"illada-rt: stopping at once ({signal.Signals(sig).name} again)", file=sys.stderr, flush=True)
        timer = threading.Timer(HARD_STOP_SECONDS + 1.0, _exit, (self.status,))
        timer.daemon = True
        timer.start()                  # the backstop, should the loop be stuck
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:           # the loop is gone: nobody to tell
            _exit(self.status)
        loop.call_soon_threadsafe(self._tell_and_exit)

    def _tell_and_exit(self):
        self.api.stop_now()            # running requests end with 503
        asyncio.get_running_loop().create_task(self._exit_when_told())

    async def _exit_when_told(self):
        end = time.monotonic() + HARD_STOP_SECONDS
        await asyncio.sleep(0.05)      # the handlers answer
        while self.api.in_flight and time.monotonic() < end:
            await asyncio.sleep(0.02)
        _exit(self.status)


def _exit(status: int):
    sys.stderr.flush()
    os._exit(status)


def run(args) -> int:
    """Load the model, serve until SIGINT/SIGTERM, shut down gracefully. Returns the exit status."""
    _import_stack()
    from ..serving.http import create_app   # Starlette: only once the command runs
    from ..serving.http.server import listen_socket, make_server

    limits, conns = _check_args(args)
    conns = dataclasses.replace(conns, max_connections=_fit_connections(args.max_connections))
    if args.data_parallel > 1:
        return _run_front_end(args, conns)
    if args.tensor_parallel > 1 and launched_by_torchrun() and int(os.environ.get("RANK", "0")) > 0:
        _load(args)           # a torchrun rank other than 0: serve rank 0's engine until it closes
        return 0

    sock = listen_socket(args.host, args.port)   # a busy port or a bad host: one line, before the model loads
    try:
        engine = _load(args)
        aeng = AsyncEngine(engine, max_batch_size=args.max_batch_size, max_queue=args.max_queue,
                           request_timeout=args.request_timeout)
        name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
        app = create_app(aeng, name, limits)
        hard_stop = _HardStop(app)
        server = make_server(app, conns, log_level=args.log_level, graceful_timeout=args.graceful_timeout,
                             on_second_signal=hard_stop)
        port = sock.getsockname()[1]
        print(f"illada-rt: serving {name!r} on http://{args.host}:{port}", file=sys.stderr, flush=True)
        # uvicorn re-raises the signal that stopped it once it is done; these handlers take it,
        # so a requested stop ends with status 0 instead of a KeyboardInterrupt or a kill.
        caught = []
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda s, frame: caught.append(s))
        try:
            server.run(sockets=[sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        sock.close()
    if hard_stop.status is not None:   # the loop ended before the hard stop's own exit
        _exit(hard_stop.status)
    engine.close()                     # with --tensor-parallel: the other ranks end
    if not server.started:
        raise RuntimeError(f"the server could not start on {args.host}:{args.port} (see the log above)")
    print("illada-rt: server stopped" + (f" ({signal.Signals(caught[0]).name})" if caught else ""),
          file=sys.stderr, flush=True)
    return 0


def _load(args) -> Engine:
    if args.device.startswith("cuda:") and args.device[5:].isdigit() and int(args.device[5:]) < torch.cuda.device_count():
        torch.cuda.set_device(int(args.device[5:]))   # the kernels run on the current device (see device.py)
    return Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype, kernels=args.kernels,
                                  tensor_parallel=args.tensor_parallel)


def _run_front_end(args, conns) -> int:
    """--data-parallel M: start M replica servers (cli/data_parallel.py), serve the router
    (serving/http/router.py) on --host/--port until SIGINT/SIGTERM, then stop the replicas."""
    from ..serving.http.router import create_router
    from ..serving.http.server import listen_socket, make_server
    from .data_parallel import start_replicas, stop_replicas

    sock = listen_socket(args.host, args.port)   # a busy port: one line, before any replica starts
    caught, previous = [], {}
    try:
        replicas = start_replicas(args)
        try:
            server = make_server(create_router(replicas), conns, log_level=args.log_level,
                                 graceful_timeout=args.graceful_timeout)
            print(f"illada-rt: serving {len(replicas)} replicas on http://{args.host}:{sock.getsockname()[1]}",
                  file=sys.stderr, flush=True)
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    previous[sig] = signal.signal(sig, lambda s, frame: caught.append(s))
            server.run(sockets=[sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            stop_replicas(replicas)
    finally:
        sock.close()
    print("illada-rt: server stopped" + (f" ({signal.Signals(caught[0]).name})" if caught else ""),
          file=sys.stderr, flush=True)
    return 0
