"""A property of the HTTP API, tried on generated requests (hypothesis, derandomized and bounded):
whatever a well-formed HTTP request carries, the answer is never a 5xx other than 503/504 (in
the status or in a stream's error event), errors have OpenAI's shape, and afterwards the
server (`illada-rt serve`, a real process) is alive, /health answers within a second and its
memory has not grown without bound."""
import json
import subprocess
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from checkpoints import write_text_checkpoint  # noqa: E402
from serve_processes import start_serve, stop  # noqa: E402

EXAMPLES = 150          # per kernel pass: a few hundred requests per run
RSS_GROWTH_MIB = 200    # what the server may grow by over them (it measures ~tens of MiB)
LIMITS = ["--max-prompts-per-request", "4", "--max-gen-length", "32", "--max-steps", "32",
          "--max-prompt-tokens", "64", "--max-request-tokens", "256", "--request-timeout", "20"]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory, kernel_impl):
    """(url, process) of `illada-rt serve` on a tiny text checkpoint with small limits."""
    path = str(tmp_path_factory.mktemp("property_text"))
    write_text_checkpoint(path)
    proc, url = start_serve(["--model", path, "--log-level", "critical", "--served-model-name", "tiny", *LIMITS],
                            stdout=subprocess.DEVNULL)
    yield url, proc
    proc.terminate()
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        stop(proc)


# ---------------------------------------------------------------- what a request may hold
# A valid request of each kind, then (most of the time) a few of its fields replaced by anything.

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=12), st.sampled_from([0, -1, 2 ** 63, 10 ** 30, 1e308, 5e-324, "", "\ud800"]))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=4), max_leaves=8)
WORDS = ["w1", "w2", "w9", "w150", "<eos>", "<bos>", "ROMEO", "\u00e9", "w1\n"]
words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join)
texts = st.one_of(words, st.text(max_size=24), st.sampled_from(["", "\ud800", "w1 \udfff", "\x00", "<mask>"]))
token_ids = st.lists(st.integers(4, 205), min_size=1, max_size=12)


@st.composite
def schedules(draw) -> dict:
    """gen_length, block_length and steps that fit together (or max_tokens alone)."""
    gen_length = draw(st.sampled_from([4, 8, 16, 32]))
    block_length = draw(st.sampled_from([b for b in (2, 4, 8, 16, 32) if gen_length % b == 0]))
    blocks = gen_length // block_length
    steps = draw(st.sampled_from([s for s in range(blocks, 33, blocks)]))
    return draw(st.sampled_from([dict(gen_length=gen_length, block_length=block_length, steps=steps),
                                 dict(max_tokens=draw(st.integers(1, 32)))]))


SAMPLING = {
    "temperature": st.sampled_from([0, 0.5, 1.0]), "threshold": st.sampled_from([0.5, 0.9]),
    "cfg_scale": st.sampled_from([0.0, 1.0]), "seed": st.integers(0, 100), "timeout": st.sampled_from([10, 1e-3]),
    "remasking": st.sampled_from(["low_confidence", "random"]), "model": st.just("tiny"),
}
ANSWER = {
    "cache": st.sampled_from(["prefix", "dual"]), "stop": st.one_of(st.sampled_from(WORDS), st.lists(
        st.sampled_from(WORDS), max_size=3)), "stop_token_ids": st.sampled_from([[], [1], [5, 6]]),
    "stop_at_eos": st.booleans(), "stream": st.booleans(), "stream_options": st.fixed_dictionaries(
        {"include_usage": st.booleans()}),
}
completion = st.builds(lambda schedule, rest: {**schedule, **rest}, schedules(), st.fixed_dictionaries(
    {"prompt": st.one_of(words, st.lists(words, min_size=1, max_size=4), token_ids,
                         st.lists(token_ids, min_size=1, max_size=4))}, optional={**SAMPLING, **ANSWER}))
infill = st.fixed_dictionaries(
    {"infill": st.lists(st.sampled_from(["w1", "w7", "<mask>", "<mask>"]), min_size=1, max_size=10).map(
        lambda ws: " ".join(ws + ["<mask>"]))},
    optional={**SAMPLING, "steps": st.sampled_from([1, 2, 4]), "block_length": st.sampled_from([1, 2, 8]),
              "stream": st.booleans()})
chat = st.builds(lambda schedule, rest: {**schedule, **rest}, schedules(), st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                                                 "content": words}), min_size=1, max_size=3)},
    optional={**SAMPLING, **ANSWER}))
# the fields a client shapes most (text, lists, sizes) come up three times as often as the others
SHAPED = ["prompt", "messages", "infill", "stop", "stop_token_ids", "gen_length", "steps", "max_tokens", "cfg_scale"]
FIELD_NAMES = sorted({"mask_marker", "block_length", "n", "logprobs", "top_p", "x"} | set(SAMPLING) | set(ANSWER)
                     | set(SHAPED)) + SHAPED * 2
# a value of the wrong type or range for about any field
confusing = st.sampled_from([63, -1, 0, 2 ** 63, 1e308, -1e308, 5e-324, True, None, "", "x", "\ud800", "w1 \udfff",
                             [], [63], ["x"], [[]], {}, {"a": 1}, [[1], 2]])
anything = st.one_of(confusing, confusing, scalars, texts, token_ids, st.lists(token_ids, max_size=3),
                     st.integers(-3, 40), junk)
one_change = st.dictionaries(st.sampled_from(FIELD_NAMES), anything, min_size=1, max_size=1)
changes = st.one_of(st.just({}), one_change, one_change,
                    st.dictionaries(st.sampled_from(FIELD_NAMES), anything, min_size=2, max_size=3))


def changed(bodies):
    return st.builds(lambda body, change: json.dumps({**body, **change}).encode(), bodies, changes)


REQUESTS = st.one_of(
    st.tuples(st.just("/v1/completions"), changed(completion)),
    st.tuples(st.just("/v1/completions"), changed(infill)),
    st.tuples(st.just("/v1/chat/completions"), changed(chat)),
    st.tuples(st.sampled_from(["/v1/completions", "/v1/chat/completions"]), st.binary(max_size=48)),
)


def check_answer(r: httpx.Response, infill: bool):
    assert r.status_code < 500 or r.status_code in (503, 504), r.text[:500]
    if r.status_code != 200:
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["type"] and err["code"] == r.status_code
        return
    if r.headers["content-type"].startswith("text/event-stream"):
        events = [e[len("data: "):] for e in r.text.split("\n\n") if e.startswith("data: ")]
        for e in events:
            if e != "[DONE]" and "error" in json.loads(e):
                assert json.loads(e)["error"]["code"] in (503, 504), e
        assert events and (events[-1] == "[DONE]" or "error" in json.loads(events[-1]))
    else:
        body = r.json()
        assert body["choices"] and all(c["finish_reason"] in ("stop", "length") for c in body["choices"])
        if not infill:   # an infill's token_ids are the whole filled text, its completion tokens the masks
            assert body["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in body["choices"])


@pytest.fixture(scope="module")
def client(server):
    url, proc = server
    with httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(3):        # warm up before the memory baseline
            c.post("/v1/completions", json={"prompt": "w1 w2", "gen_length": 8, "block_length": 8, "steps": 8})
        yield c, proc, rss_mib(proc.pid)


# bounded: the same EXAMPLES requests every run, no shrinking (a failure shows its request as generated)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(request=REQUESTS)
@example(request=("/v1/completions", b'{"prompt": "w1", "gen_length": 4, "steps": 2, "stop_token_ids": 63}'))
@example(request=("/v1/completions", b'{"prompt": "w1 \\ud800", "max_tokens": 4}'))
@example(request=("/v1/completions", b'{"prompt": "w1", "max_tokens": 4, "cfg_scale": 1e308}'))
@example(request=("/v1/completions", b'{"prompt": "w1", "gen_length": 8, "block_length": 8, "steps": 1099511627776}'))
@example(request=("/v1/completions", b'{"prompt": [[5], [6], [7], [8], [9]], "max_tokens": 4}'))
@example(request=("/v1/completions", b'{"infill": "' + b"<mask> " * 80 + b'", "timeout": 0.2}'))
def test_no_request_gets_a_server_error(client, request):
    c, proc, _ = client
    path, body = request
    r = c.post(path, content=body, headers={"content-type": "application/json"})
    check_answer(r, infill=b'"infill"' in body)
    assert proc.poll() is None


def test_afterwards_the_server_is_alive_fast_and_not_bloated(client):
    c, proc, baseline = client
    assert proc.poll() is None
    t0 = time.monotonic()
    assert c.get("/health").status_code == 200 and time.monotonic() - t0 < 1.0
    grown = rss_mib(proc.pid) - baseline
    assert grown < RSS_GROWTH_MIB, f"the server's memory grew by {grown:.0f} MiB"
