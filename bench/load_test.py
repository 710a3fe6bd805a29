"""Load test of the HTTP server: N concurrent clients on loopback for a bounded time.

    python bench/load_test.py                                   # bundled demo model, 4 clients, 30 s
    python bench/load_test.py --clients 8 --duration 60 --gen-length 64 --json result.json
    python bench/load_test.py --url http://127.0.0.1:8000       # a server already running (same model)
    python bench/load_test.py --device cuda --agreement 0.97    # on a GPU (what bench/gpu_check.sh runs)

Without --url the server is started as a subprocess (`illada-rt serve`) on a free loopback port
and stopped with SIGINT at the end. Each client sends requests one after the other until
--duration has passed: varied prompts with fixed seeds, at temperature 0 and above 0, half the
clients streaming (server-sent events). Every answer is checked: complete (a finish_reason, and
for streams the [DONE] marker) and equal, text and token ids, to what Engine.generate gives for
the same prompt and seed on its own in this process (with --agreement below 1: at least that
fraction of all answer tokens, position by position; on a GPU a batched row runs its matmuls at
other shapes than alone, so rounding can break a confidence tie the other way, as
test_cuda_serving.py allows). Reports throughput (requests/s, answer
tokens/s), latency percentiles (and time to the first streamed piece), the server's mean batch
size, and the sequential speed of Engine.generate for comparison. Exit status 1 if any answer
failed a check.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time

import httpx

from illada_rt import DEMO_MODEL_DIR, Engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["ROMEO:", "JULIET:\nO", "KING.\n", "First Citizen:\nBefore we proceed any further,", "HAMLET.\nTo be",
           "MACBETH.\nIs this", "Enter", "LEAR.\nHow now,", "PORTIA.\nThe quality", "OTHELLO.\nIt is the cause,",
           "Good morrow,", "SCENE II.", "Now is the winter", "Friends, Romans,", "All the world", "What light"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEMO_MODEL_DIR, help="checkpoint with a tokenizer (default: the demo model)")
    ap.add_argument("--url", default=None, help="an already running server of the same model (default: start one)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds during which requests start (default 30)")
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--block-length", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: gen-length)")
    ap.add_argument("--temperatures", default="0,0.7", help="comma-separated, cycled over the cases")
    ap.add_argument("--cases", type=int, default=16, help="distinct (prompt, seed, temperature) cases")
    ap.add_argument("--stream-clients", type=float, default=0.5, help="fraction of clients that stream")
    ap.add_argument("--max-batch-size", type=int, default=16, help="for the started server")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: the started server and the reference answers")
    ap.add_argument("--agreement", type=float, default=1.0,
                    help="least fraction of all answer tokens equal to Engine.generate alone's (default 1: every "
                         "answer the same text and tokens; e.g. 0.97 on a GPU)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.cases < 1:
        ap.error("--clients and --cases must be at least 1, --duration positive")
    if not 0 < args.agreement <= 1:
        ap.error("--agreement must be in (0, 1]")
    return args


def make_cases(args):
    """Client k's j-th request is case (k + j * clients) % cases: one temperature per round of
    requests, so that clients in step share batches (the scheduler batches equal sampling settings)."""
    temps = [float(t) for t in args.temperatures.split(",")]
    return [dict(prompt=PROMPTS[i % len(PROMPTS)], seed=1000 + i, temperature=temps[(i // args.clients) % len(temps)])
            for i in range(args.cases)]


def request_body(args, case) -> dict:
    return dict(prompt=case["prompt"], seed=case["seed"], temperature=case["temperature"], gen_length=args.gen_length,
                block_length=args.block_length, steps=args.steps or args.gen_length)


def expected_answers(args, cases):
    """Each case's (text, token ids) from Engine.generate alone; and its sequential seconds per request."""
    eng = Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    out, start = [], time.perf_counter()
    for case in cases:
        body = request_body(args, case)
        ids = eng.codec.encode(body.pop("prompt"))
        gen = eng.generate([ids], **body)
        tokens = gen.answers[0, :int(gen.answer_lengths[0])].tolist()
        out.append((eng.codec.decode(tokens), tokens))
    return out, (time.perf_counter() - start) / len(cases)


def token_agreement(tokens, expected):
    """(positions where two answers hold the same token, positions of the longer one)."""
    return sum(a == b for a, b in zip(tokens, expected)), max(len(tokens), len(expected))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args):
    """`illada-rt serve` as a subprocess on a free loopback port; returns (process, url) once healthy."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "illada_rt", "serve", "--model", args.model, "--port", str(port),
           "--max-batch-size", str(args.max_batch_size), "--device", args.device, "--dtype", args.dtype,
           "--max-queue", str(max(256, 2 * args.clients)), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 180
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not become healthy within 180 s")


def stop_server(proc):
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def one_request(client, body: dict, stream: bool) -> dict:
    """Send one request; returns its text, token ids, finish_reason, completeness, latency and first-piece time."""
    start = time.perf_counter()
    if not stream:
        r = await client.post("/v1/completions", json=body)
        if r.status_code != 200:
            return dict(ok=False, error=f"HTTP {r.status_code}: {r.text[:200]}")
        choice = r.json()["choices"][0]
        usage = r.json()["usage"]
        complete = choice["finish_reason"] in ("stop", "length") and usage["completion_tokens"] == len(
            choice["token_ids"])
        return dict(ok=complete, text=choice["text"], tokens=choice["token_ids"], seconds=time.perf_counter() - start,
                    first=None, error=None if complete else "incomplete answer")
    text, tokens, reason, done, first = "", [], None, False, None
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            return dict(ok=False, error=f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                return dict(ok=False, error=f"stream error: {chunk['error']}")
            first = first if first is not None else time.perf_counter() - start
            piece = chunk["choices"][0]
            text, tokens, reason = text + piece["text"], tokens + piece["token_ids"], piece["finish_reason"] or reason
    complete = done and reason in ("stop", "length")
    return dict(ok=complete, text=text, tokens=tokens, seconds=time.perf_counter() - start, first=first,
                error=None if complete else "stream ended without [DONE] or finish_reason")


async def run_clients(args, url, cases, expected):
    deadline = time.monotonic() + args.duration
    results = []
    streaming = round(args.stream_clients * args.clients)

    async def client_loop(k: int):
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0)) as client:
            j = 0
            while time.monotonic() < deadline:
                i = (k + j * args.clients) % len(cases)
                res = await one_request(client, request_body(args, cases[i]), stream=k < streaming)
                res.update(case=i, stream=k < streaming)
                if res["ok"]:
                    res["agreed"], res["compared"] = token_agreement(res["tokens"], expected[i][1])
                    res["agreement"] = res["agreed"] / res["compared"] if res["compared"] else 1.0
                    res["exact"] = (res["text"], res["tokens"]) == expected[i]
                    if not res["exact"] and args.agreement >= 1:  # else the run's agreement is checked
                        res.update(ok=False, error=f"case {i}: answer differs from Engine.generate alone "
                                                   f"({res['agreement']:.1%} of the tokens agree): "
                                                   f"{res['text']!r} != {expected[i][0]!r}")
                results.append(res)
                j += 1

    start = time.perf_counter()
    await asyncio.gather(*(client_loop(k) for k in range(args.clients)))
    return results, time.perf_counter() - start


def percentile(values, q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def server_batch_size(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    total = float(re.search(r"^illada_batch_size_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(r"^illada_batch_size_count (\S+)$", text, re.M).group(1))
    return total / count if count else 0.0


def summarize(args, results, wall, sequential_s, batch) -> dict:
    good = [r for r in results if r["ok"]]
    lat = [r["seconds"] for r in good]
    firsts = [r["first"] for r in good if r["first"] is not None]
    summary = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), machine=platform.machine(),
        cpus=os.cpu_count(), python=platform.python_version(), model=args.model, device=args.device,
        dtype=args.dtype, clients=args.clients, duration_s=args.duration, gen_length=args.gen_length,
        block_length=args.block_length, steps=args.steps or args.gen_length, temperatures=args.temperatures,
        requests=len(results), completed=len(good), failed=len(results) - len(good),
        exact=sum(bool(r.get("exact")) for r in results), agreement_required=args.agreement,
        token_agreement=sum(r.get("agreed", 0) for r in results) / max(1, sum(r.get("compared", 0) for r in results)),
        errors=sorted({r["error"] for r in results if not r["ok"]})[:10], wall_s=wall,
        requests_per_s=len(good) / wall, answer_tokens_per_s=sum(len(r["tokens"]) for r in good) / wall,
        canvas_tokens_per_s=len(good) * args.gen_length / wall,
        latency_p50_s=percentile(lat, 50) if lat else None, latency_p90_s=percentile(lat, 90) if lat else None,
        latency_p99_s=percentile(lat, 99) if lat else None,
        first_piece_p50_s=percentile(firsts, 50) if firsts else None, mean_batch_size=batch,
        sequential_engine_s=sequential_s, sequential_engine_requests_per_s=1.0 / sequential_s)
    return summary


def markdown(s: dict) -> str:
    def f(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"
    return "\n".join([
        f"### Load test: {s['clients']} clients, {s['duration_s']:g} s, gen_length {s['gen_length']}, "
        f"block {s['block_length']}, steps {s['steps']}, temperatures {s['temperatures']}",
        "",
        "| requests | ok | failed | req/s | answer tok/s | gen tok/s | p50 s | p90 s | p99 s | first piece p50 s "
        "| mean batch | Engine alone req/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {s['requests']} | {s['completed']} | {s['failed']} | {f(s['requests_per_s'], 2)} | "
        f"{f(s['answer_tokens_per_s'], 1)} | {f(s['canvas_tokens_per_s'], 1)} | {f(s['latency_p50_s'])} | "
        f"{f(s['latency_p90_s'])} | {f(s['latency_p99_s'])} | {f(s['first_piece_p50_s'])} | "
        f"{f(s['mean_batch_size'], 2)} | {f(s['sequential_engine_requests_per_s'], 2)} |",
        "",
        f"({s['model']}, {s['device']} {s['dtype']}, {s['cpus']} CPUs, {s['date']}; every answer "
        + ("complete and equal to Engine.generate alone" if not s["failed"] and s["exact"] == s["requests"] else
           f"complete; {s['exact']} of {s['requests']} equal to Engine.generate alone, {s['token_agreement']:.1%} "
           f"of the tokens (at least {s['agreement_required']:.0%} required)" if not s["failed"] else
           f"checked: {s['errors']}") + ")",
    ])


def main(argv=None) -> int:
    args = parse_args(argv)
    cases = make_cases(args)
    expected, sequential_s = expected_answers(args, cases)
    proc, url = (None, args.url) if args.url else start_server(args)
    try:
        with httpx.Client(base_url=url, timeout=600) as c:   # warm-up, not counted
            c.post("/v1/completions", json=request_body(args, cases[0])).raise_for_status()
        results, wall = asyncio.run(run_clients(args, url, cases, expected))
        batch = server_batch_size(url)
    finally:
        if proc is not None:
            stop_server(proc)
    summary = summarize(args, results, wall, sequential_s, batch)
    print(markdown(summary))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)
    agree = summary["token_agreement"] >= args.agreement
    return 0 if summary["failed"] == 0 and summary["completed"] > 0 and agree else 1


if __name__ == "__main__":
    sys.exit(main())
