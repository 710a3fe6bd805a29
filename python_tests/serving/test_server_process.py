"""The server on a real loopback socket: uvicorn in a thread (client disconnects cancel
requests) and `illada-rt serve` as a process (answers, stops cleanly on SIGINT/SIGTERM)."""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from checkpoints import write_text_checkpoint  # noqa: E402
from serve_processes import ROOT, free_port, start_serve, stop, wait_for  # noqa: E402
from illada_rt import Engine  # noqa: E402
from illada_rt.serving import AsyncEngine  # noqa: E402
from illada_rt.serving.http import create_app  # noqa: E402



@pytest.fixture(scope="module")
def text_dir(tmp_path_factory, kernel_impl):
    path = str(tmp_path_factory.mktemp("serve_text"))
    write_text_checkpoint(path)
    return path


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_client_disconnect_cancels_the_request(text_dir):
    aeng = AsyncEngine(Engine.from_pretrained(text_dir))
    real_step = aeng.scheduler.batcher.step
    aeng.scheduler.batcher.step = lambda rows: (time.sleep(0.05), real_step(rows))[1]   # 64 steps: > 3 s
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(aeng, "tiny"), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: server.started)
        body = {"prompt": "w1 w2", "gen_length": 64, "block_length": 8, "steps": 64}
        with httpx.Client(base_url=url, timeout=30) as c:
            with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                assert r.status_code == 200
                first = next(line for line in r.iter_lines() if line.startswith("data: "))
                assert '"text"' in first
        wait_for(lambda: metric(url, "illada_requests_failed_total") == 1, 3.0)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/completions", json=body, timeout=0.3)
        wait_for(lambda: metric(url, "illada_requests_failed_total") == 2, 3.0)
        assert metric(url, "illada_requests_completed_total") == 0
        aeng.scheduler.batcher.step = real_step
        r = httpx.post(url + "/v1/completions", json={**body, "gen_length": 8, "steps": 8}, timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"]
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_answers_and_stops_cleanly_on_a_signal(text_dir, sig):
    proc, url = start_serve(["--model", text_dir, "--log-level", "warning"])
    try:
        r = httpx.post(url + "/v1/completions", json={"prompt": "w1", "gen_length": 8, "block_length": 8,
                                                     "steps": 8, "seed": 0}, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == os.path.basename(text_dir)
        assert httpx.post(url + "/v1/completions", content=b"{", timeout=60).status_code == 400
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    assert f"server stopped ({sig.name})" in err and "Traceback" not in err


def test_serve_cuts_off_stalled_clients_and_caps_connections(text_dir):
    """Raw sockets against `illada-rt serve`: half a request is answered 408 and closed at the
    header deadline, connections beyond --max-connections get 503, /health stays fast."""
    port = free_port()
    proc, url = start_serve(["--model", text_dir, "--log-level", "warning", "--header-timeout", "1",
                             "--body-timeout", "1", "--keep-alive-timeout", "1", "--max-connections", "6"], port)

    def until_closed(sock: socket.socket) -> bytes:
        sock.settimeout(5)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data
    try:
        stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
        for s in stalled:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as extra:
            refused = until_closed(extra)
        t0 = time.monotonic()
        answers = [until_closed(s) for s in stalled]
        waited = time.monotonic() - t0
        for s in stalled:
            s.close()
        t0 = time.monotonic()
        assert httpx.get(url + "/health", timeout=5).status_code == 200 and time.monotonic() - t0 < 1.0
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert refused.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in refused.lower()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers) and waited < 2.5, (answers, waited)
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch, capsys):
    from illada_rt import cli
    monkeypatch.setitem(sys.modules, "starlette", None)     # import starlette now raises ImportError
    assert cli.main(["serve", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install "illada_rt[serve]"' in err


def test_import_illada_rt_does_not_need_starlette():
    code = "import sys, illada_rt, illada_rt.serving, illada_rt.cli, illada_rt.cli.serve; print('starlette' in sys.modules)"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
