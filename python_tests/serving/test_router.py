"""The data-parallel front end (serving/http/router.py) on its own: replicas stood in for by an
httpx MockTransport, so the choice of replica, failures, /health and /metrics are checked without
starting processes (test_data_parallel.py runs the real thing)."""
import json

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from illada_rt.serving.http.router import MAX_BODY_BYTES, Replica, create_router  # noqa: E402

METRICS = """# HELP illada_requests_total requests
# TYPE illada_requests_total counter
illada_requests_total {n}
illada_batch_rows{{quantile="0.5"}} 2
"""


class FakeReplicas:
    """Replica i answers at http://replica-i; `dead` ones refuse connections; each answer names
    the replica and echoes the body."""

    def __init__(self, count: int):
        self.replicas = [Replica(i, f"http://replica-{i}") for i in range(count)]
        self.dead = set()
        self.seen = []            # (replica index, path) of every request that reached a replica

    def handle(self, request: httpx.Request) -> httpx.Response:
        index = int(request.url.host.split("-")[1])
        if index in self.dead:
            raise httpx.ConnectError("connection refused", request=request)
        self.seen.append((index, request.url.path))
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        if request.url.path == "/metrics":
            return httpx.Response(200, text=METRICS.format(n=10 + index))
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny"}]})
        return httpx.Response(200, json={"replica": index, "body": json.loads(request.content)})

    def client(self):
        app = create_router(self.replicas, httpx.AsyncClient(transport=httpx.MockTransport(self.handle)))
        return TestClient(app)


def test_requests_go_to_the_least_loaded_live_replica_unchanged():
    fake = FakeReplicas(3)
    fake.replicas[0].in_flight = 2
    fake.replicas[1].in_flight = 1
    fake.replicas[2].in_flight = 1
    with fake.client() as c:
        r = c.post("/v1/completions", json={"prompt": "w1", "seed": 3})
        assert r.status_code == 200 and r.json() == {"replica": 1, "body": {"prompt": "w1", "seed": 3}}
        fake.replicas[1].down = "stopped"
        assert c.post("/v1/chat/completions", json={"messages": []}).json()["replica"] == 2
    assert [r.in_flight for r in fake.replicas] == [2, 1, 1]     # every request's count returned


def test_a_replica_that_fails_is_a_503_and_marked_down_and_the_others_serve():
    fake = FakeReplicas(2)
    fake.dead.add(0)
    with fake.client() as c:
        r = c.post("/v1/completions", json={"prompt": "w1"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "replica 0" in r.json()["error"]["message"]
        assert c.post("/v1/completions", json={"prompt": "w1"}).json()["replica"] == 1
        health = c.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert [s["status"] for s in health.json()["replicas"]] == ["down", "ok"]
        fake.replicas[1].down = "stopped"
        none = c.post("/v1/completions", json={"prompt": "w1"})
        assert none.status_code == 503 and none.headers["retry-after"] == "5"
        assert c.get("/health").status_code == 503 and c.get("/v1/models").status_code == 503


def test_metrics_carry_every_replica_labelled():
    fake = FakeReplicas(2)
    with fake.client() as c:
        text = c.get("/metrics").text
    lines = text.splitlines()
    assert lines.count("# TYPE illada_requests_total counter") == 1        # each family declared once
    assert 'illada_requests_total{replica="0"} 10' in lines and 'illada_requests_total{replica="1"} 11' in lines
    assert 'illada_batch_rows{quantile="0.5",replica="1"} 2' in lines
    assert 'illada_rt_replica_up{replica="0"} 1' in lines and 'illada_rt_router_in_flight{replica="1"} 0' in lines


def test_models_come_from_a_live_replica_and_big_bodies_are_refused_here():
    fake = FakeReplicas(2)
    fake.replicas[0].down = "stopped"
    with fake.client() as c:
        assert c.get("/v1/models").json() == {"data": [{"id": "tiny"}]}
        big = c.post("/v1/completions", content=b"x" * (MAX_BODY_BYTES + 1))
    assert big.status_code == 413
    assert (1, "/v1/models") in fake.seen and not [s for s in fake.seen if s[1] == "/v1/completions"]
