"""The HTTP server (serving/http/) through Starlette's TestClient on a tiny text checkpoint:
answers equal Engine's, streams add up to the non-streamed answer, every bad request gets
its 4xx and the server goes on serving."""
import asyncio
import json
import threading
import time

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from checkpoints import write_text_checkpoint  # noqa: E402
from illada_rt import Engine  # noqa: E402
from illada_rt.serving import AsyncEngine  # noqa: E402
from illada_rt.serving.http import create_app  # noqa: E402

KW = dict(gen_length=16, block_length=8, steps=16)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, kernel_impl):
    path = tmp_path_factory.mktemp("server_text")
    write_text_checkpoint(str(path))
    return Engine.from_pretrained(str(path))


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(AsyncEngine(engine, max_batch_size=4), "tiny")) as c:
        yield c


def sse_chunks(text: str):
    """The JSON chunks of an SSE body, checking that it ends with [DONE]."""
    events = [e[len("data: "):] for e in text.split("\n\n") if e.startswith("data: ")]
    assert events and events[-1] == "[DONE]", text[-200:]
    return [json.loads(e) for e in events[:-1]]


def engine_answer(engine, prompt, **options):
    """(text, token ids) of Engine.generate alone: the answer up to its first stop token."""
    ids = engine.codec.encode(prompt) if isinstance(prompt, str) else prompt
    out = engine.generate([ids], **options)
    tokens = out.answers[0, :int(out.answer_lengths[0])].tolist()
    return engine.codec.decode(tokens), tokens


def post(client, path="/v1/completions", **body):
    r = client.post(path, json=body)
    return r.status_code, r.json() if not body.get("stream") or r.status_code != 200 else sse_chunks(r.text)


# ---------------------------------------------------------------- answers


@pytest.mark.parametrize("options", [dict(seed=3), dict(seed=4, temperature=0.8), dict(seed=5, threshold=0.6),
                                     dict(seed=6, cache="prefix"), dict(seed=7, cache="dual"),
                                     dict(seed=8, cfg_scale=1.0, remasking="random", temperature=0.5)])
def test_completion_equals_the_engine_alone(client, engine, options):
    status, body = post(client, prompt="w1 w2 w3", **KW, **options)
    assert status == 200, body
    text, tokens = engine_answer(engine, "w1 w2 w3", **KW, **options)
    choice = body["choices"][0]
    assert choice["text"] == text and choice["token_ids"] == tokens
    assert choice["finish_reason"] == ("stop" if len(tokens) < 16 else "length")
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": len(tokens), "total_tokens": 3 + len(tokens)}


@pytest.mark.parametrize("options", [dict(seed=11), dict(seed=12, temperature=0.9), dict(seed=13, cache="dual"),
                                     dict(seed=14, stop=["w7"], stop_token_ids=[])])
def test_streamed_pieces_add_up_to_the_answer(client, options):
    status, whole = post(client, prompt="w5 w6", **KW, **options)
    assert status == 200
    status, chunks = post(client, prompt="w5 w6", stream=True, stream_options={"include_usage": True},
                          **KW, **options)
    assert status == 200
    pieces = [c["choices"][0] for c in chunks if c["choices"]]
    assert "".join(p["text"] for p in pieces) == whole["choices"][0]["text"]
    assert sum((p["token_ids"] for p in pieces), []) == whole["choices"][0]["token_ids"]
    assert [p["finish_reason"] for p in pieces][-1] == whole["choices"][0]["finish_reason"]
    assert all(p["finish_reason"] is None for p in pieces[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert len({c["id"] for c in chunks}) == 1


def test_prompt_lists_and_token_ids(client, engine):
    status, body = post(client, prompt=["w1 w2", "w3 w4 w5"], seed=20, **KW)
    assert status == 200
    for i, prompt in enumerate(["w1 w2", "w3 w4 w5"]):
        assert body["choices"][i]["text"] == engine_answer(engine, prompt, seed=20 + i, **KW)[0]
        assert body["choices"][i]["seed"] == 20 + i
    ids = engine.codec.encode("w3 w4 w5")
    assert post(client, prompt=ids, seed=21, **KW)[1]["choices"][0]["text"] == body["choices"][1]["text"]
    status, body2 = post(client, prompt=[ids, ids[:2]], seed=21, **KW)
    assert status == 200 and body2["choices"][0]["text"] == body["choices"][1]["text"]


def test_max_tokens_and_stop_strings_cut_the_completion(client, engine):
    # max_tokens 10 with block_length 4: gen_length 12, the answer cut to 10 tokens
    status, body = post(client, prompt="w9", max_tokens=10, block_length=4, seed=30, stop_token_ids=[])
    assert status == 200
    _, tokens = engine_answer(engine, "w9", gen_length=12, block_length=4, steps=12, seed=30, stop_token_ids=[])
    choice = body["choices"][0]
    assert choice["token_ids"] == tokens[:10] and choice["finish_reason"] == "length"
    assert choice["text"] == engine.codec.decode(tokens[:10])
    # a stop string: the text ends before it
    words = choice["text"].split()
    stop = words[len(words) // 2]
    status, body = post(client, prompt="w9", max_tokens=10, block_length=4, seed=30, stop_token_ids=[], stop=stop)
    assert body["choices"][0]["text"] == choice["text"][:choice["text"].find(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"
    # defaults: max_tokens alone sets gen_length (one block when short)
    status, body = post(client, prompt="w9", max_tokens=5, seed=31, stop_token_ids=[])
    assert status == 200 and len(body["choices"][0]["token_ids"]) == 5


def test_chat_completion_uses_the_chat_template(client, engine):
    messages = [{"role": "user", "content": "w1 w2"}]
    status, body = post(client, "/v1/chat/completions", messages=messages, seed=40, **KW)
    assert status == 200, body
    ids = engine.codec.encode(engine.codec.render_chat(messages), add_special_tokens=False)
    text, _ = engine_answer(engine, ids, seed=40, **KW)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": text}
    status, chunks = post(client, "/v1/chat/completions", messages=messages, seed=40, stream=True, **KW)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    parts = [{"role": "user", "content": [{"type": "text", "text": "w1 "}, {"type": "text", "text": "w2"}]}]
    assert post(client, "/v1/chat/completions", messages=parts, seed=40, **KW)[1]["choices"] == body["choices"]


def test_chat_without_a_template_is_a_clear_400(tmp_path):
    write_text_checkpoint(str(tmp_path), chat_template=None)
    with TestClient(create_app(AsyncEngine(Engine.from_pretrained(str(tmp_path))), "plain")) as c:
        status, body = post(c, "/v1/chat/completions", messages=[{"role": "user", "content": "w1"}])
        assert status == 400 and "chat template" in body["error"]["message"]
        assert post(c, prompt="w1", **KW)[0] == 200


def test_infill_fills_the_masks(client, engine):
    status, body = post(client, infill="w1 <mask> w3 <mask> <mask> w6", seed=50)
    assert status == 200, body
    want = engine.infill_text("w1 <mask> w3 <mask> <mask> w6", seed=50)
    assert body["choices"][0]["text"] == want and "<mask>" not in want
    assert body["usage"]["completion_tokens"] == 3 and body["usage"]["prompt_tokens"] == 6
    status, body = post(client, infill="w1 [M] w3", mask_marker="[M]", seed=50, steps=1)
    assert status == 200 and len(body["choices"][0]["text"].split()) == 3
    status, chunks = post(client, infill="w1 <mask> w3", seed=51, stream=True)
    assert status == 200 and chunks[0]["choices"][0]["text"] == engine.infill_text("w1 <mask> w3", seed=51)


# ---------------------------------------------------------------- errors


BAD_BODIES = [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b"\xff\xfe", 400, "not valid JSON"),
    ({"prompt": 5}, 400, "'prompt'"),
    ({"prompt": []}, 400, "'prompt'"),
    ({"prompt": ""}, 400, "empty"),
    ({"prompt": "w1 <mask> w2"}, 400, "mask token"),
    ({"prompt": [1, 2, 99999]}, 400, "token ids must lie"),
    ({"prompt": [[1, 2], []]}, 400, "token lists"),
    ({"prompt": "w1", "gen_length": "many"}, 400, "'gen_length' must be an integer"),
    ({"prompt": "w1", "gen_length": 0}, 400, "'gen_length' must be at least 1"),
    ({"prompt": "w1", "gen_length": True}, 400, "'gen_length'"),
    ({"prompt": "w1", "gen_length": 16, "block_length": 5}, 400, "not divisible"),
    ({"prompt": "w1", "gen_length": 16, "block_length": 8, "steps": 3}, 400, "not divisible"),
    ({"prompt": "w1", "gen_length": 1024}, 400, "max_sequence_length"),
    ({"prompt": "w1", "temperature": -1}, 400, "temperature"),
    ({"prompt": "w1", "threshold": 2.0}, 400, "threshold"),
    ({"prompt": "w1", "remasking": "best"}, 400, "remasking"),
    ({"prompt": "w1", "cache": "full"}, 400, "'cache'"),
    ({"prompt": "w1", "cache": "dual", "cfg_scale": 1.0}, 400, "cfg"),
    ({"prompt": "w1", "seed": -3}, 400, "seed"),
    ({"prompt": "w1", "n": 2}, 400, "'n'"),
    ({"prompt": "w1", "logprobs": 3}, 400, "'logprobs'"),
    ({"prompt": "w1", "stop": 7}, 400, "'stop'"),
    ({"prompt": "w1", "timeout": 0}, 400, "'timeout'"),
    ({"prompt": ["w1", "w2"], "stream": True}, 400, "one prompt"),
    ({"prompt": "w1", "model": "gpt-4"}, 404, "not served"),
    ({"infill": "w1 w2"}, 400, "no mask"),
    ({"infill": "w1 <mask>", "prompt": "w1"}, 400, "either"),
    ({"infill": "w1 <mask>", "gen_length": 8}, 400, "does not apply"),
    ({"infill": "w1 <mask> <mask>", "steps": 3, "block_length": 1}, 400, "not divisible"),
]


@pytest.mark.parametrize("body,status,reason", BAD_BODIES)
def test_bad_requests_get_a_4xx_with_a_reason_and_serving_goes_on(client, body, status, reason):
    r = client.post("/v1/completions", content=body if isinstance(body, bytes) else json.dumps(body))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert reason in err["message"] and err["type"] and err["code"] == status
    assert post(client, prompt="w1", seed=0, **KW)[0] == 200


@pytest.mark.parametrize("path,body,reason", [
    ("/v1/chat/completions", {"messages": []}, "'messages'"),
    ("/v1/chat/completions", {"messages": [{"content": "w1"}]}, "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "max_tokens": -1}, "max_tokens"),
])
def test_bad_chat_requests(client, path, body, reason):
    status, out = post(client, path, **body)
    assert status == 400 and reason in out["error"]["message"]


def test_unknown_routes_methods_and_big_bodies(client):
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and "/v2/nothing" in r.json()["error"]["message"]
    assert client.get("/v1/completions").status_code == 405
    r = client.post("/v1/completions", content=b'{"prompt": "' + b"w1 " * 400_000 + b'"}')
    assert r.status_code == 413
    assert post(client, prompt="w1", seed=0, **KW)[0] == 200


@pytest.mark.parametrize("raw,reason", [
    (b'{"prompt": "w1", "cfg_scale": Infinity}', "Infinity"),
    (b'{"prompt": "w1", "temperature": NaN}', "NaN"),
    (b'{"prompt": "w1", "temperature": 1e400}', "temperature"),
    (b'{"prompt": "w1", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "JSON"),
])
def test_non_finite_numbers_and_deep_nesting_are_400(client, raw, reason):
    r = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and reason in r.json()["error"]["message"]
    assert post(client, prompt="w1", seed=0, **KW)[0] == 200


def test_an_internal_error_is_a_500_and_the_server_goes_on(engine, monkeypatch):
    aeng = AsyncEngine(engine)
    with TestClient(create_app(aeng, "tiny")) as c:
        monkeypatch.setattr(aeng, "generate", lambda *a, **k: (_ for _ in ()).throw(KeyError("boom")))
        status, body = post(c, prompt="w1", **KW)
        assert status == 500 and body["error"]["type"] == "internal_error" and "boom" in body["error"]["message"]
        monkeypatch.undo()
        assert post(c, prompt="w1", **KW)[0] == 200


async def _until(condition, seconds=20.0):
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.005)


def test_queue_full_is_429_and_timeout_is_504(engine, monkeypatch):
    """A blocked infill holds the scheduler; one request waits (the queue holds 1), the next is refused."""
    gate = threading.Event()
    real_logits = engine.model.logits      # the infill's forward (the row batch uses model.hidden)
    monkeypatch.setattr(engine.model, "logits", lambda *a, **k: (gate.wait(30), real_logits(*a, **k))[1])
    aeng = AsyncEngine(engine, max_batch_size=1, max_queue=1)
    app = create_app(aeng, "tiny")

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:
            blocker = asyncio.ensure_future(c.post("/v1/completions", json={"infill": "w1 <mask>", "seed": 0}))
            await _until(lambda: aeng.stats()["requests_submitted"] == 1 and aeng.stats()["queue_depth"] == 0)
            waiting = asyncio.ensure_future(c.post("/v1/completions", json={"prompt": "w1", "timeout": 0.05, **KW}))
            await _until(lambda: aeng.stats()["queue_depth"] == 1)
            refused = await c.post("/v1/completions", json={"prompt": "w1", **KW})
            streamed = await c.post("/v1/completions", json={"prompt": "w1", "stream": True, **KW})
            await asyncio.sleep(0.1)   # the waiting request's deadline passes
            gate.set()
            return refused, streamed, await waiting, await blocker, await c.post("/v1/completions",
                                                                                  json={"prompt": "w1", **KW})

    try:
        refused, streamed, waited, blocked, after = asyncio.run(scenario())
    finally:
        gate.set()
        asyncio.run(aeng.shutdown())
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "queue_full"
    assert refused.headers["retry-after"] == "1"
    assert streamed.status_code == 429 and streamed.headers["retry-after"] == "1"
    assert waited.status_code == 504 and "timed out" in waited.json()["error"]["message"]
    assert blocked.status_code == 200 and after.status_code == 200
    assert aeng.stats()["requests_rejected"] == 2


def test_health_models_metrics_and_shutdown(engine):
    app = create_app(AsyncEngine(engine), "tiny")
    with TestClient(app) as c:
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/v1/models").json()["data"][0]["id"] == "tiny"
        assert post(c, prompt="w1", **KW)[0] == 200
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        for name in ("illada_requests_total 1", "illada_requests_completed_total 1", "illada_generated_tokens_total",
                     "illada_tokens_per_second", "illada_queue_depth", "illada_active_requests",
                     "illada_batch_size_bucket", "illada_requests_rejected_total"):
            assert name in r.text
    after = TestClient(app)                     # the lifespan ended: the engine is shut down
    health = after.get("/health")
    assert health.status_code == 503 and health.headers["retry-after"] == "1"
    r = after.post("/v1/completions", json={"prompt": "w1", **KW})
    assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable" and r.headers["retry-after"] == "1"


def test_a_timeout_after_the_first_piece_ends_the_stream_with_an_error_event(engine):
    aeng = AsyncEngine(engine)
    real_step, calls = aeng.scheduler.batcher.step, []

    def step(rows):   # the first block (2 steps) at once, then slow: the 1 s deadline passes in block 1
        calls.append(1)
        if len(calls) == 3:
            time.sleep(1.5)
        return real_step(rows)
    aeng.scheduler.batcher.step = step
    with TestClient(create_app(aeng, "tiny")) as c:
        r = c.post("/v1/completions", json={"prompt": "w1", "gen_length": 32, "block_length": 8, "steps": 8,
                                            "timeout": 1.0, "stream": True})
        assert r.status_code == 200
        events = [e[len("data: "):] for e in r.text.split("\n\n") if e.startswith("data: ")]
        assert events[-1] != "[DONE]"
        assert json.loads(events[0])["choices"][0]["finish_reason"] is None
        err = json.loads(events[-1])["error"]
        assert err["type"] == "timeout" and err["code"] == 504 and "timed out" in err["message"]
        assert post(c, prompt="w1", **KW)[0] == 200


def test_the_server_timeout_caps_the_requests(engine):
    aeng = AsyncEngine(engine, request_timeout=0.05)
    real_step = aeng.scheduler.batcher.step
    aeng.scheduler.batcher.step = lambda rows: (time.sleep(0.1), real_step(rows))[1]   # 16 steps: 1.6 s
    with TestClient(create_app(aeng, "tiny")) as c:
        status, body = post(c, prompt="w1", timeout=100, **KW)
        assert status == 504 and body["error"]["type"] == "timeout"
