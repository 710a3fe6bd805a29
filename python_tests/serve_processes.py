"""`illada-rt serve` as a process of its own, for the tests that drive it over loopback: started
on a free port with this interpreter and this source tree, and waited for until /health answers."""
import os
import socket
import subprocess
import sys
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, seconds: float = 20.0):
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


def serve_env() -> dict:
    """One thread per process (the machine's cores are shared), this source tree first."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def start_serve(args, port=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE, seconds: float = 120.0):
    """(process, URL) of `illada-rt serve --port P *args`, once its /health answers 200 (the process
    is killed and the test fails, with its stderr, where it exits or does not answer in time)."""
    port = free_port() if port is None else port
    proc = subprocess.Popen([sys.executable, "-m", "illada_rt", "serve", "--port", str(port), *args],
                            stdout=stdout, stderr=stderr, text=True, env=serve_env())
    url = f"http://127.0.0.1:{port}"

    def healthy():
        if proc.poll() is not None:
            err = proc.communicate()[1] if stderr == subprocess.PIPE else ""
            raise AssertionError(f"serve exited with {proc.returncode} while starting: {err}")
        try:
            return httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False
    try:
        wait_for(healthy, seconds)
    except BaseException:
        stop(proc)
        raise
    return proc, url


def stop(proc, seconds: float = 60.0) -> None:
    """Kill proc where it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.communicate(timeout=seconds)
    except (ValueError, subprocess.TimeoutExpired):   # its pipes already read
        proc.wait(seconds)
