"""The HTTP server against a hostile client: every request costs a bounded amount checked before
work starts, the event loop stays free, slow and idle clients are cut off, every request kind
honours its timeout and its client leaving, a second Ctrl-C stops `serve` at once, client
mistakes are 4xx naming the rule, bad serve arguments are one line, and stop strings cut the
text, the token ids and the usage alike."""
import asyncio
import contextlib
import gc
import json
import logging
import os
import select
import signal
import socket
import threading
import time
import tracemalloc

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from checkpoints import write_text_checkpoint  # noqa: E402
from serve_processes import start_serve, stop, wait_for  # noqa: E402
from illada_rt import Engine  # noqa: E402
from illada_rt.config import DEMO_MODEL_DIR  # noqa: E402
from illada_rt.serving import AsyncEngine  # noqa: E402
from illada_rt.serving.http import create_app  # noqa: E402
from illada_rt.serving.http.limits import RequestLimits  # noqa: E402
from illada_rt.serving.http.server import ConnectionLimits, RateLimitedLog, listen_socket, make_server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KW = dict(gen_length=16, block_length=8, steps=16)
SMALL = RequestLimits(max_prompts_per_request=4, max_gen_length=32, max_steps=32, max_prompt_tokens=20,
                      max_request_tokens=60)
# the chat template of checkpoints that insist on user/assistant turns
ALTERNATING = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
               "{% endif %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}<|assistant|>")


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory, kernel_impl):
    path = str(tmp_path_factory.mktemp("hostile_text"))
    write_text_checkpoint(path, chat_template=ALTERNATING)
    return path


@pytest.fixture(scope="module")
def engine(text_dir):
    return Engine.from_pretrained(text_dir)


@pytest.fixture(scope="module")
def small(engine):
    """(TestClient, AsyncEngine) of an app with SMALL limits."""
    aeng = AsyncEngine(engine, max_batch_size=4)
    with TestClient(create_app(aeng, "tiny", SMALL)) as c:
        yield c, aeng


@pytest.fixture(scope="module")
def plain(engine):
    """A TestClient of an app with the default limits."""
    with TestClient(create_app(AsyncEngine(engine, max_batch_size=4), "tiny")) as c:
        yield c


def slow_logits(engine, monkeypatch, seconds: float):
    """Every forward of the eager loop (infill, cohorts) takes `seconds` longer."""
    real = engine.model.logits
    monkeypatch.setattr(engine.model, "logits", lambda *a, **k: (time.sleep(seconds), real(*a, **k))[1])


# ---------------------------------------------------------------- 4. bounded cost, checked first


@pytest.mark.parametrize("body,flag", [
    ({"prompt": [[5]] * 5, **KW}, "--max-prompts-per-request"),
    ({"prompt": ["w1"] * 5, **KW}, "--max-prompts-per-request"),
    ({"prompt": "w1", "gen_length": 64, "block_length": 8, "steps": 8}, "--max-gen-length"),
    ({"prompt": "w1", "max_tokens": 100}, "--max-gen-length"),
    ({"prompt": "w1", "gen_length": 16, "block_length": 8, "steps": 64}, "--max-steps"),
    ({"prompt": "w1", "gen_length": 32, "block_length": 32, "steps": 2 ** 40}, "--max-steps"),
    ({"prompt": [5] * 21, **KW}, "--max-prompt-tokens"),
    ({"prompt": " ".join(["w5"] * 21), **KW}, "--max-prompt-tokens"),
    ({"prompt": [[5] * 12] * 3, **KW}, "--max-request-tokens"),
    ({"infill": "w1 " + "<mask> " * 20}, "--max-prompt-tokens"),
    ({"infill": "w1 <mask> <mask>", "steps": 64}, "--max-steps"),
])
def test_a_request_over_a_limit_is_a_400_naming_it_and_nothing_runs(small, body, flag):
    client, aeng = small
    before = aeng.stats()["requests_submitted"]
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400 and flag in r.json()["error"]["message"], r.text
    assert aeng.stats()["requests_submitted"] == before
    assert client.post("/v1/completions", json={"prompt": "w1", **KW}).status_code == 200


def test_a_long_chat_is_over_the_prompt_token_limit(small):
    client, _ = small
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "w1 " * 30}], **KW})
    assert r.status_code == 400 and "--max-prompt-tokens" in r.json()["error"]["message"]


def test_a_megabyte_of_prompts_is_refused_at_once_with_the_default_limits(engine):
    aeng = AsyncEngine(engine)
    with TestClient(create_app(aeng, "tiny")) as c:
        t0 = time.monotonic()
        r = c.post("/v1/completions", json={"prompt": [[5]] * 200_000, **KW})
        assert r.status_code == 400 and "--max-prompts-per-request" in r.json()["error"]["message"]
        assert time.monotonic() - t0 < 3.0
        assert aeng.stats()["requests_submitted"] == 0


def test_prompts_that_the_queue_cannot_take_are_refused_before_any_runs(engine):
    aeng = AsyncEngine(engine, max_queue=2)
    with TestClient(create_app(aeng, "tiny")) as c:
        r = c.post("/v1/completions", json={"prompt": [[5], [6], [7]], **KW})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert aeng.stats()["requests_submitted"] == 0
        assert c.post("/v1/completions", json={"prompt": [[5], [6]], **KW}).status_code == 200


# ---------------------------------------------------------------- 5. tokenization off the event loop


def test_tokenization_runs_off_the_event_loop(engine, monkeypatch):
    codec = engine.text.codec
    real = codec.tokenizer

    class Slow:     # a tokenizer that takes 1.5 s (and lets go of the GIL, as encode_batch does)
        def __getattr__(self, name):
            return getattr(real, name)

        def encode_batch(self, texts, *a, **k):
            time.sleep(1.5 if "w77" in texts[0] else 0)
            return real.encode_batch(texts, *a, **k)
    monkeypatch.setattr(codec, "tokenizer", Slow())
    app = create_app(AsyncEngine(engine), "tiny", SMALL)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:
            slow = asyncio.ensure_future(c.post("/v1/completions", json={"prompt": "w77 " * 30, **KW}))
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            health = await c.get("/health")
            return health, time.monotonic() - t0, await slow

    health, waited, slow = asyncio.run(scenario())
    assert health.status_code == 200 and waited < 0.5
    assert slow.status_code == 400 and "--max-prompt-tokens" in slow.json()["error"]["message"]


def test_megabyte_text_prompts_leave_the_event_loop_free(kernel_impl):
    """The demo model's tokenizer takes ~0.5 s for a megabyte of text; while four such prompts are
    tokenized (and refused: over --max-prompt-tokens), /health keeps answering at once."""
    app = create_app(AsyncEngine(Engine.from_pretrained(DEMO_MODEL_DIR)), "demo")
    body = json.dumps({"prompt": "ROMEO: what light through yonder window breaks " * 20_000}).encode()

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as c:
            big = [asyncio.ensure_future(c.post("/v1/completions", content=body)) for _ in range(4)]
            waits = []        # each: a /health answer and a 20 ms sleep, less the 20 ms
            while not all(b.done() for b in big):
                t0 = time.monotonic()
                assert (await c.get("/health")).status_code == 200
                await asyncio.sleep(0.02)
                waits.append(time.monotonic() - t0 - 0.02)
            return [await b for b in big], waits

    answers, waits = asyncio.run(scenario())
    assert all(a.status_code == 400 and "--max-prompt-tokens" in a.json()["error"]["message"] for a in answers)
    assert len(waits) > 5 and max(waits) < 0.3, max(waits)


def asgi_scope(path: str, method: str = "POST") -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2)}


async def asgi_post(app, path: str, body: bytes) -> int:
    """The status of one POST straight through the ASGI app (no client library in between)."""
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    statuses = []

    async def receive():
        if incoming:
            return incoming.pop(0)
        await asyncio.get_running_loop().create_future()     # the client stays (until cancelled)

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(asgi_scope(path), receive, send)
    return statuses[0]


def test_rejected_large_prompts_leave_no_cyclic_garbage(engine):
    """A refused request's buffers are freed by reference counting, not left for a full collection."""
    app = create_app(AsyncEngine(engine), "tiny", SMALL)
    body = json.dumps({"prompt": [5] * 100_000, **KW}).encode()

    async def scenario():
        assert await asgi_post(app, "/v1/completions", body) == 400      # warm up
        gc.collect()
        gc.disable()
        tracemalloc.start()
        try:
            for _ in range(5):
                assert await asgi_post(app, "/v1/completions", body) == 400
            held = tracemalloc.get_traced_memory()[0]
            gc.collect()
            return held - tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
            gc.enable()

    freed = asyncio.run(scenario())
    assert freed < 200_000, f"{freed} bytes were garbage in reference cycles"


# ---------------------------------------------------------------- 6. slow, idle and too many clients


@contextlib.contextmanager
def served(app, limits: ConnectionLimits):
    """app under make_server in a thread, on a free loopback port; yields the port."""
    sock = listen_socket("127.0.0.1", 0)
    server = make_server(app, limits, log_level="critical")
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive()


QUICK = ConnectionLimits(header_timeout=0.5, body_timeout=0.5, keep_alive_timeout=0.5, max_connections=8)


@pytest.fixture(scope="module")
def quick_server(engine):
    with served(create_app(AsyncEngine(engine), "tiny"), QUICK) as port:
        yield port


def read_until_closed(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends until it closes the connection; fails if it stays open `seconds`."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except socket.timeout:
        pytest.fail(f"the connection is still open after {seconds} s")
    except ConnectionResetError:
        pass
    return data


def health_seconds(port: int) -> float:
    t0 = time.monotonic()
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    return time.monotonic() - t0


HEAD = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"


@pytest.mark.parametrize("sent,status", [
    (b"", None),                                            # connects, says nothing
    (HEAD, b"408"),                                         # headers never end
    (HEAD + b"content-length: 100\r\n\r\n{\"prompt\"", b"408"),   # the body never ends
])
def test_a_client_that_stalls_is_cut_off(quick_server, sent, status):
    with socket.create_connection(("127.0.0.1", quick_server)) as s:
        s.sendall(sent)
        t0 = time.monotonic()
        answer = read_until_closed(s, 3.0)
        assert time.monotonic() - t0 < 2.0
    assert (status is None and answer == b"") or answer.startswith(b"HTTP/1.1 " + status)
    assert health_seconds(quick_server) < 1.0


def test_a_client_that_drips_one_byte_at_a_time_is_cut_off(quick_server):
    request = HEAD + b"content-length: 2\r\n\r\n{}"    # all of it would take 4.5 s
    with socket.create_connection(("127.0.0.1", quick_server)) as s:
        t0 = time.monotonic()
        for byte in request:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            if select.select([s], [], [], 0.05)[0]:     # the server answered or closed
                break
        elapsed = time.monotonic() - t0
        answer = read_until_closed(s, 3.0)
    assert elapsed < 2.0 and answer.startswith(b"HTTP/1.1 408"), (elapsed, answer[:40])
    assert health_seconds(quick_server) < 1.0


def test_an_idle_keep_alive_connection_is_closed(quick_server):
    with socket.create_connection(("127.0.0.1", quick_server)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = read_until_closed(s, 3.0)
    assert answer.startswith(b"HTTP/1.1 200")


def test_connections_beyond_the_cap_get_503_and_the_server_recovers(quick_server):
    idle = [socket.create_connection(("127.0.0.1", quick_server)) for _ in range(QUICK.max_connections)]
    try:
        time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", quick_server)) as extra:
            answer = read_until_closed(extra, 3.0)
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower()
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: health_seconds(quick_server) < 1.0, 5.0)


def test_health_is_fast_while_clients_stall(engine):
    many = ConnectionLimits(header_timeout=5, body_timeout=5, keep_alive_timeout=5, max_connections=256)
    with served(create_app(AsyncEngine(engine), "tiny"), many) as port:
        stalled = []
        try:
            for i in range(200):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(HEAD[:10 + i % 40])
                stalled.append(s)
            assert max(health_seconds(port) for _ in range(5)) < 1.0
        finally:
            for s in stalled:
                s.close()


def test_a_flood_of_identical_log_lines_is_rate_limited():
    now = [0.0]
    limiter = RateLimitedLog(clock=lambda: now[0])
    record = lambda: logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource",
                                       None, None)
    passed = [limiter.filter(record()) for _ in range(1000)]
    assert sum(passed) == RateLimitedLog.BURST
    now[0] += RateLimitedLog.INTERVAL
    later = record()
    assert limiter.filter(later) and f"{1000 - RateLimitedLog.BURST} similar lines left out" in later.getMessage()


# ---------------------------------------------------------------- 7. infill: timeouts and disconnects


def test_an_infill_honours_its_timeout(engine, monkeypatch):
    slow_logits(engine, monkeypatch, 0.05)                  # 40 steps: 2 s
    aeng = AsyncEngine(engine)
    with TestClient(create_app(aeng, "tiny")) as c:
        t0 = time.monotonic()
        r = c.post("/v1/completions", json={"infill": "w1 " + "<mask> " * 40, "timeout": 0.3, "seed": 0})
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        assert time.monotonic() - t0 < 1.5
        monkeypatch.undo()
        assert c.post("/v1/completions", json={"infill": "w1 <mask>", "seed": 0}).status_code == 200


def test_an_abandoned_infill_does_not_hold_up_the_next_request(engine, monkeypatch):
    slow_logits(engine, monkeypatch, 0.05)                  # 80 steps: 4 s
    aeng = AsyncEngine(engine)
    with served(create_app(aeng, "tiny"), ConnectionLimits()) as port:
        url = f"http://127.0.0.1:{port}/v1/completions"
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json={"infill": "w1 " + "<mask> " * 80, "seed": 0}, timeout=0.4)
        t0 = time.monotonic()
        r = httpx.post(url, json={"prompt": "w1", **KW}, timeout=30)
        assert r.status_code == 200 and time.monotonic() - t0 < 1.5
        assert aeng.stats()["requests_cancelled"] == 1


# ---------------------------------------------------------------- 9. a second Ctrl-C


def test_a_second_ctrl_c_stops_serve_at_once_and_tells_the_client(tmp_path):
    proc, url = start_serve(["--log-level", "warning"])
    answers = []

    def ask():   # the demo model: 224 steps take several seconds
        answers.append(httpx.post(url + "/v1/completions", json={"prompt": "ROMEO:", "gen_length": 224,
                                                                 "block_length": 32, "steps": 224}, timeout=60))
    try:
        client = threading.Thread(target=ask)
        client.start()
        wait_for(lambda: "illada_active_requests 1" in httpx.get(url + "/metrics").text, 20)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None            # the first one waits for the running request
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        stopped_in = time.monotonic() - t0
        client.join(10)
    finally:
        stop(proc)
    assert proc.returncode == 130, err
    assert stopped_in < 3.0 and "terminate called" not in err and "Traceback" not in err, err
    assert answers and answers[0].status_code == 503 and answers[0].headers["retry-after"] == "1"
    assert answers[0].json()["error"]["type"] == "unavailable"


# ---------------------------------------------------------------- 10. client mistakes are 4xx


@pytest.mark.parametrize("raw,reason", [
    (b'{"prompt": "w1", "stop_token_ids": 63}', "stop_token_ids"),
    (b'{"prompt": "w1", "stop_token_ids": "w1"}', "stop_token_ids"),
    (b'{"prompt": "w1 \\ud800"}', "surrogate"),
    (b'{"prompt": ["w1", "\\udfff w2"]}', "surrogate"),
    (b'{"prompt": "w1", "stop": "\\ud800"}', "surrogate"),
    (b'{"infill": "\\ud800 <mask>"}', "surrogate"),
    (b'{"prompt": "w1", "cfg_scale": 1e308}', "cfg_scale"),
    (b'{"prompt": "w1", "stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", '
     b'"q"]}', "'stop'"),
    (b'{"infill": "w1 <mask>", "mask_marker": ""}', "mask_marker"),
])
def test_client_mistakes_are_400_naming_the_rule(plain, raw, reason):
    r = plain.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and reason in r.json()["error"]["message"], r.text


def test_a_chat_template_that_refuses_the_messages_is_a_400(plain):
    client = plain
    messages = [{"role": "user", "content": "w1"}, {"role": "user", "content": "w2"}]
    r = client.post("/v1/chat/completions", json={"messages": messages, **KW})
    assert r.status_code == 400 and "roles must alternate" in r.json()["error"]["message"], r.text
    r = client.post("/v1/chat/completions", content=json.dumps({"messages": [{"role": "user", "content": "\ud800"}],
                                                                **KW}))
    assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"]
    assert client.post("/v1/chat/completions", json={"messages": messages[:1], **KW}).status_code == 200


def test_a_client_that_leaves_mid_body_is_no_server_error(engine, caplog):
    app = create_app(AsyncEngine(engine), "tiny")
    incoming = [{"type": "http.request", "body": b'{"prompt": "w1", ', "more_body": True}, {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    with caplog.at_level(logging.WARNING):
        asyncio.run(app(asgi_scope("/v1/completions"), receive, send))
    assert sent[0]["status"] < 500
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# ---------------------------------------------------------------- 11. bad serve arguments


@pytest.mark.parametrize("argv,names", [
    (["--port", "99999"], "--port"), (["--port", "-1"], "--port"), (["--max-batch-size", "0"], "--max-batch-size"),
    (["--max-queue", "0"], "--max-queue"), (["--request-timeout", "0"], "--request-timeout"),
    (["--graceful-timeout", "-1"], "--graceful-timeout"), (["--max-steps", "0"], "--max-steps"),
    (["--max-prompts-per-request", "0"], "--max-prompts-per-request"), (["--max-connections", "0"], "--max-connections"),
    (["--header-timeout", "nan"], "--header-timeout"), (["--body-timeout", "0"], "--body-timeout"),
    (["--tensor-parallel", "0"], "--tensor-parallel"), (["--data-parallel", "0"], "--data-parallel"),
])
def test_a_bad_serve_argument_is_one_line_and_status_2(capsys, argv, names):
    from illada_rt import cli
    assert cli.main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and names in err, err


def test_a_busy_port_is_one_line_and_status_2(capsys):
    from illada_rt import cli
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert cli.main(["serve", "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot listen" in err, err


# ---------------------------------------------------------------- 13. details


def test_a_stop_string_cuts_text_token_ids_and_usage_alike(small, engine):
    client, _ = small
    body = {"prompt": "w9 w8", "gen_length": 16, "block_length": 4, "steps": 16, "seed": 3, "stop_token_ids": []}
    whole = client.post("/v1/completions", json=body).json()["choices"][0]
    words = whole["text"].split()
    stop = words[len(words) // 2]
    cut = whole["text"].find(stop)
    tokens = whole["token_ids"]
    before = max(k for k in range(len(tokens) + 1) if len(engine.codec.decode(tokens[:k])) <= cut)
    r = client.post("/v1/completions", json={**body, "stop": stop}).json()
    choice = r["choices"][0]
    assert choice["text"] == whole["text"][:cut] and choice["finish_reason"] == "stop"
    assert choice["token_ids"] == tokens[:before] and choice["text"].startswith(engine.codec.decode(tokens[:before]))
    assert r["usage"]["completion_tokens"] == before
    chunks = [json.loads(e[len("data: "):]) for e in client.post(
        "/v1/completions", json={**body, "stop": stop, "stream": True, "stream_options": {"include_usage": True}}
    ).text.split("\n\n") if e.startswith("data: {")]
    pieces = [c["choices"][0] for c in chunks if c["choices"]]
    assert "".join(p["text"] for p in pieces) == choice["text"]
    assert sum((p["token_ids"] for p in pieces), []) == choice["token_ids"]
    assert chunks[-1]["usage"] == r["usage"]
