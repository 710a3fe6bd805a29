"""Serving past one engine, as processes on loopback driven through the OpenAI client:
`illada-rt serve --data-parallel 2` (two replica servers behind one front end) and
`illada-rt serve --tensor-parallel 2` (one server over a two-rank engine)."""
import concurrent.futures
import os
import signal
import subprocess
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from checkpoints import write_text_checkpoint  # noqa: E402
from serve_processes import start_serve, stop  # noqa: E402
from illada_rt import Engine  # noqa: E402

KW = dict(max_tokens=8, extra_body=dict(gen_length=8, block_length=8, steps=8))


@pytest.fixture(scope="module")
def served(tmp_path_factory, kernel_impl):
    """(front-end URL, the front end's process, the checkpoint dir) for `serve --data-parallel 2`."""
    path = str(tmp_path_factory.mktemp("dp_text"))
    write_text_checkpoint(path)
    proc, url = start_serve(["--model", path, "--data-parallel", "2", "--served-model-name", "tiny",
                             "--log-level", "warning"], stdout=None, stderr=None)
    yield url, proc, path
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    finally:
        stop(proc)


def replicas(url):
    return httpx.get(url + "/health", timeout=5).json()["replicas"]


def test_concurrent_answers_equal_one_engines(served):
    url, _, path = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    prompts = [f"w{i} w{i + 1} w{i + 2}" for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: client.completions.create(model="tiny", prompt=p, seed=3, **KW), prompts))
    eng = Engine.from_pretrained(path)
    for prompt, answer in zip(prompts, answers):
        want = eng.generate_text(prompt, gen_length=8, block_length=8, steps=8, seed=3)
        assert answer.choices[0].text == want
    assert [r["status"] for r in replicas(url)] == ["ok", "ok"]
    metrics = httpx.get(url + "/metrics").text
    assert 'replica="0"' in metrics and 'replica="1"' in metrics and 'illada_rt_replica_up{replica="1"} 1' in metrics


def test_streaming_through_the_front_end(served):
    url, _, _ = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    chunks = list(client.completions.create(model="tiny", prompt="w1 w2", seed=1, stream=True, **KW))
    whole = client.completions.create(model="tiny", prompt="w1 w2", seed=1, **KW)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text


def test_a_killed_replica_fails_alone_and_the_other_keeps_serving(served):
    url, front, _ = served
    pids = _replica_pids(front.pid)
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    ok = 0
    for i in range(6):
        try:
            client.completions.create(model="tiny", prompt=f"w{i}", seed=i, **KW)
            ok += 1
        except openai.APIStatusError as e:
            assert e.status_code == 503                       # only what the dead replica held
    assert ok >= 5
    states = [r["status"] for r in replicas(url)]
    assert sorted(states) == ["down", "ok"]
    assert httpx.get(url + "/health").status_code == 200     # degraded, still serving


def _replica_pids(parent: int):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_serve_over_two_ranks(tmp_path):
    """`serve --tensor-parallel 2`: the answer one engine gives; SIGTERM stops both ranks, status 0."""
    path = str(tmp_path)
    write_text_checkpoint(path)
    proc, url = start_serve(["--model", path, "--tensor-parallel", "2", "--served-model-name", "tiny",
                             "--log-level", "warning"], stdout=None, stderr=None)
    try:
        ranks = _replica_pids(proc.pid)
        assert len(ranks) == 1                                   # rank 1, a process of the server's
        client = openai.OpenAI(base_url=url + "/v1", api_key="none")
        answer = client.completions.create(model="tiny", prompt="w1 w2 w3", seed=5, **KW)
        want = Engine.from_pretrained(path).generate_text("w1 w2 w3", gen_length=8, block_length=8, steps=8, seed=5)
        assert answer.choices[0].text == want
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        time.sleep(0.5)
        assert not os.path.exists(f"/proc/{ranks[0]}") or open(f"/proc/{ranks[0]}/stat").read().split()[2] == "Z"
    finally:
        stop(proc)
