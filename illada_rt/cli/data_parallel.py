"""`illada-rt serve --data-parallel M`: M engine replicas, each an `illada-rt serve` process of its
own on a loopback port, behind one front end (serving/http/router.py) on --host/--port.

On CUDA replica i sees the GPUs [i*N, (i+1)*N) (CUDA_VISIBLE_DEVICES; N = --tensor-parallel,
default 1) as cuda:0..N-1; on the CPU every replica shares the machine. The front end starts
once every replica answers /health; SIGINT or SIGTERM stops the front end, then the replicas
(each gracefully; one still running after 30 s is killed). A replica that dies is reported by
/health and /metrics; the others serve on.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import List

import torch

from ..parallel.group import free_port
from ..parallel.launch import PR_SET_PDEATHSIG

START_TIMEOUT_S = 600.0
PASSED_ON = ("max_prompts_per_request", "max_gen_length", "max_steps", "max_prompt_tokens", "max_request_tokens",
             "header_timeout", "body_timeout", "keep_alive_timeout")


def replica_command(args, port: int) -> List[str]:
    """The `illada-rt serve` command line of one replica: the front end's options, its own port."""
    cmd = [sys.executable, "-m", "illada_rt.cli", "serve", "--model", args.model, "--host", "127.0.0.1",
           "--port", str(port), "--device", args.device, "--dtype", args.dtype,
           "--max-batch-size", str(args.max_batch_size), "--max-queue", str(args.max_queue),
           "--graceful-timeout", str(args.graceful_timeout), "--log-level", args.log_level,
           "--served-model-name", args.served_model_name or os.path.basename(os.path.normpath(args.model))]
    for flag, value in (("--kernels", args.kernels), ("--request-timeout", args.request_timeout),
                        ("--tensor-parallel", args.tensor_parallel)):
        if value is not None:
            cmd += [flag, str(value)]
    for name in PASSED_ON:              # what one request may cost, and how long a client may take
        cmd += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    return cmd


def replica_env(args, index: int) -> dict:
    """Replica index's environment: on CUDA, its own --tensor-parallel GPUs (RuntimeError where the
    machine has too few for every replica)."""
    env = dict(os.environ)
    if torch.device(args.device).type == "cuda":
        n = args.tensor_parallel
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        if len(gpus) < (index + 1) * n:
            raise RuntimeError(f"--data-parallel {args.data_parallel} x --tensor-parallel {n} needs "
                               f"{args.data_parallel * n} GPUs; {len(gpus)} are visible")
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[index * n:(index + 1) * n])
    return env


def start_replicas(args):
    """Start the replicas and wait until each answers /health (RuntimeError naming one that fails)."""
    import httpx

    from ..serving.http.router import Replica

    if args.device not in ("cpu", "cuda"):
        raise ValueError(f"--data-parallel: --device must be cpu or cuda (replicas take their own GPUs), "
                         f"got {args.device!r}")
    replicas = []
    try:
        for i in range(args.data_parallel):
            port = free_port()
            # a session of its own: a Ctrl-C at the terminal reaches the front end, which stops the
            # replicas itself; and a replica ends (gracefully) when the front end's process ends
            proc = subprocess.Popen(replica_command(args, port), env=replica_env(args, i), start_new_session=True,
                                    preexec_fn=_terminate_with_parent)

            replicas.append(Replica(i, f"http://127.0.0.1:{port}", proc))
        deadline = time.monotonic() + START_TIMEOUT_S
        for r in replicas:
            while True:
                if r.process.poll() is not None:
                    raise RuntimeError(f"replica {r.index} exited while starting (code {r.process.returncode})")
                try:
                    if httpx.get(r.url + "/health", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica {r.index} did not start within {START_TIMEOUT_S:.0f} s")
                time.sleep(0.2)
    except BaseException:
        stop_replicas(replicas)
        raise
    return replicas


def _terminate_with_parent() -> None:
    """In a replica, before it runs: SIGTERM when the front end's process ends (Linux)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


def stop_replicas(replicas, timeout: float = 30.0) -> None:
    """SIGTERM every replica (they stop gracefully), then kill those still running after timeout."""
    for r in replicas:
        if r.process.poll() is None:
            r.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for r in replicas:
        try:
            r.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            r.process.kill()
            r.process.wait()
