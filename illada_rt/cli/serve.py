"""`illada-rt serve`: the OpenAI-style HTTP server (serving/http/) under uvicorn.

    illada-rt serve --model DIR [--host 127.0.0.1] [--port 8000] [--max-batch-size 16] ...

SIGINT or SIGTERM stops it gracefully: no new connections, running requests finish,
then the engine shuts down; the process exits with status 0. Needs the optional extra
`pip install "illada_rt[serve]"` (Starlette and uvicorn), imported only when the command runs.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

import torch

from ..config import DEMO_MODEL_DIR
from ..engine import Engine
from ..serving import AsyncEngine
from .options import KERNELS_HELP

MISSING_EXTRA = 'the HTTP server needs Starlette and uvicorn: pip install "illada_rt[serve]"'


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve a checkpoint over HTTP (OpenAI-style API)")
    p.add_argument("--model", default=DEMO_MODEL_DIR, help="checkpoint directory (default: the bundled demo model)")
    p.add_argument("--served-model-name", default=None, help="the model's name in the API (default: the folder name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--device", default="cpu", help='"cpu" or "cuda[:N]"')
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--kernels", default=None, help=KERNELS_HELP)
    p.add_argument("--max-batch-size", type=int, default=16, help="rows per batched denoising step (default 16)")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429 (default 256)")
    p.add_argument("--request-timeout", type=float, default=None,
                   help="seconds before a request fails with 504 (default: none)")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds to let open connections finish on shutdown (default 30)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=run)
    return p


def _import_stack():
    try:
        importlib.import_module("starlette")
        import uvicorn
    except ImportError:
        raise RuntimeError(MISSING_EXTRA) from None
    return uvicorn


def run(args) -> int:
    """Load the model, serve until SIGINT/SIGTERM, shut down gracefully. Returns the exit status."""
    uvicorn = _import_stack()
    from ..serving.http import create_app   # Starlette: only once the command runs

    if args.request_timeout is not None and not args.request_timeout > 0:
        raise ValueError(f"--request-timeout must be positive, got {args.request_timeout}")
    if args.device.startswith("cuda:") and args.device[5:].isdigit() and int(args.device[5:]) < torch.cuda.device_count():
        torch.cuda.set_device(int(args.device[5:]))   # the kernels run on the current device (see device.py)
    engine = Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype, kernels=args.kernels)
    aeng = AsyncEngine(engine, max_batch_size=args.max_batch_size, max_queue=args.max_queue,
                       request_timeout=args.request_timeout)
    name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
    app = create_app(aeng, name)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on",
                            timeout_graceful_shutdown=args.graceful_timeout)
    server = uvicorn.Server(config)
    print(f"illada-rt: serving {name!r} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    # uvicorn re-raises the signal that stopped it once it is done; these handlers take it,
    # so a requested stop ends with status 0 instead of a KeyboardInterrupt or a kill.
    caught = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda s, frame: caught.append(s))
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise RuntimeError(f"the server could not start on {args.host}:{args.port} (see the log above)")
    print("illada-rt: server stopped" + (f" ({signal.Signals(caught[0]).name})" if caught else ""),
          file=sys.stderr, flush=True)
    return 0
