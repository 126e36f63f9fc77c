"""The HTTP service: a real uvicorn server on loopback around a tiny model, and the Python client."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tinyrm.pairwise.rank import rank_candidates
from tinyrm.serving.app import ServeConfig, create_app
from tinyrm.serving.client import RewardClient, RewardClientError

from .integration_helpers import save_opinionated_bert

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@contextlib.contextmanager
def serving_app(app):
    """uvicorn in a background thread on a pre-bound loopback socket; yields (base URL, server)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http="h11", loop="asyncio"))  # as `tinyrm serve`
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def running_server(rm, config: ServeConfig):
    """``serving_app`` of ``create_app(rm, config)``; yields the base URL."""
    with serving_app(create_app(rm, config)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    from tinyrm import RewardModel

    # Wide-initialised: P spreads from 0.5 (tiny_bert's stays within 2e-5 of it: 1 - P or 0.5 would pass). fp32:
    # server answers (batched with others) are compared with direct calls to 1e-5, beyond bf16 padding noise.
    rm = RewardModel.from_pretrained(save_opinionated_bert(tmp_path_factory.mktemp("serve-bert")))
    rm.engine.config.precision = "fp32"
    return rm


def spread(p: float, tol: float = 1e-5) -> float:
    """``p``, once it is shown to be far from 0.5 (then neither 1 - p nor 0.5 matches it within ``tol``)."""
    assert abs(p - 0.5) > 10 * tol, p
    return p


@pytest.fixture(scope="module")
def server(rm):
    # A long max wait makes concurrent requests merge reliably even on a busy machine.
    config = ServeConfig(api_key=KEY, max_batch_size=64, max_wait_ms=150, max_request_bytes=200_000,
                         max_candidates=8, max_items=500)
    with running_server(rm, config) as url:
        yield url


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


# ---------------------------------------------------------------------------------------- endpoints
def test_health_and_docs_need_no_key(http, rm):
    body = http.get("/health").json()
    assert body["status"] == "ok" and body["model"] == rm.name and body["device"] == "cpu" and body["uptime_s"] >= 0
    assert http.get("/docs").status_code == 200
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v1/compare", "/v1/compare_batch", "/v1/rank", "/v1/rerank", "/v2/rerank", "/health"} <= set(paths)
    # A pairwise model does not score steps: /v1/score_steps answers 400 and is not in its document
    # (a process or outcome model's lists it: tests/test_api_fuzz.py).
    assert "/v1/score_steps" not in paths


def test_compare_matches_the_model(http, rm):
    for a, b, both in (("4", "5", None), ("5", "4", None), ("4", "5", False), ("5", "4", False)):
        r = http.post("/v1/compare", json={"prompt": "2+2?", "a": a, "b": b, "both_orders": both}, headers=AUTH)
        assert r.status_code == 200
        assert r.json()["prob_a"] == pytest.approx(spread(rm.compare("2+2?", a, b, both_orders=both)), abs=1e-5)
    assert rm.compare("2+2?", "4", "5") + rm.compare("2+2?", "5", "4") == pytest.approx(1.0, abs=1e-5)


def test_compare_batch_matches_the_model(http, rm):
    items = [("2+2?", "4", "5"), ("Capital of France?", "Paris", "Rome"), ("Hi", "Hello!", "Go away.")]
    r = http.post("/v1/compare_batch", json={"items": [{"prompt": p, "a": a, "b": b} for p, a, b in items]},
                  headers=AUTH)
    assert r.status_code == 200
    assert r.json()["prob_a"] == pytest.approx([spread(p) for p in rm.compare_batch(items)], abs=1e-5)
    assert http.post("/v1/compare_batch", json={"items": []}, headers=AUTH).json() == {"prob_a": []}


@pytest.mark.parametrize("method", ["knockout", "round_robin"])
def test_rank_matches_the_library(http, rm, method):
    candidates = ["Paris.", "Rome.", "It is Paris, on the Seine.", "No idea", "Lyon"]
    r = http.post("/v1/rank", json={"prompt": "Capital of France?", "candidates": candidates, "method": method},
                  headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    direct = rank_candidates(rm, "Capital of France?", candidates, method=method)
    assert body["ranking"] == direct.ranking
    assert body["scores"] == pytest.approx(direct.scores, abs=1e-4)


def test_score_steps_on_a_pairwise_model_is_a_clear_400(http):
    r = http.post("/v1/score_steps", json={"problem": "1+1?", "steps": ["1+1=2", "The answer is 2"]}, headers=AUTH)
    assert r.status_code == 400
    assert "does not score steps" in r.json()["error"]


STEP_ROWS = [{"id": "a", "question": "Tom has 3 apples and buys 4 more. How many?", "first_error_step": 2,
              "steps": ["He starts with 3.", "3 * 4 = 12.", "The answer is: 12"], "solution_correct": False},
             {"id": "b", "question": "What is 2 * 5?", "steps": ["2 * 5 = 10.", "The answer is: 10"],
              "first_error_step": None, "solution_correct": True}]


def test_score_steps_serves_a_process_model(tiny_bert, tmp_path):
    from tinyrm import RewardModel
    from tinyrm.train import TrainConfig, train

    data = tmp_path / "steps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in STEP_ROWS))
    out = tmp_path / "prm"
    train(TrainConfig(model=tiny_bert, data=[str(data)], output=str(out), objective="process", batch_size=4,
                      micro_batch_size=4, max_steps=1, max_length=96, save_steps=0))
    prm = RewardModel.from_pretrained(str(out), device="cpu")
    prm.engine.config.precision = "fp32"
    steps = ["2 * 5 = 10.", "The answer is: 10"]
    reads = []
    read_probs = prm.engine.read_probs
    prm.engine.read_probs = lambda encodings, *a, **kw: reads.append(len(encodings)) or read_probs(encodings, *a, **kw)
    with running_server(prm, ServeConfig(max_wait_ms=1)) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/score_steps", json={"problem": "What is 2 * 5?", "steps": steps, "aggregate": "mean"})
        assert r.status_code == 200, r.text
        assert reads == [2]  # each step scored once: the reward is aggregated from the scores, not rescored
        body = r.json()
        assert body["scores"] == pytest.approx(prm.score_steps("What is 2 * 5?", steps), abs=1e-5)
        assert body["reward"] == pytest.approx(prm.score_solution("What is 2 * 5?", steps, aggregate="mean"), abs=1e-5)
        r = c.post("/v1/score_steps", json={"problem": "p", "steps": steps, "aggregate": "median-ish"})
        assert r.status_code == 422 and r.json()["field"] == "aggregate"
        r = c.post("/v1/score_steps", json={"problem": "p", "steps": []})
        assert r.status_code == 422 and r.json()["field"] == "steps"


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("headers, reason", [({}, "missing"), ({"Authorization": "Bearer nope"}, "wrong"),
                                             ({"Authorization": f"Basic {KEY}"}, "wrong")])
def test_401_without_the_right_bearer_key(http, headers, reason):
    r = http.post("/v1/compare", json={"prompt": "p", "a": "a", "b": "b"}, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert reason in r.json()["error"]


@pytest.mark.parametrize("path, payload, field", [
    ("/v1/compare", {"a": "x", "b": "y"}, "prompt"),
    ("/v1/compare", {"prompt": "p", "a": 5, "b": "y"}, "a"),
    ("/v1/compare", {"prompt": "p", "a": "x", "b": "y", "typo": 1}, "typo"),
    ("/v1/compare_batch", {"items": [{"prompt": "p", "a": "x"}]}, "items.0.b"),
    ("/v1/rank", {"prompt": "p", "candidates": []}, "candidates"),
    ("/v1/rank", {"prompt": "p", "candidates": ["a", "b"], "method": "swiss"}, "method"),
    ("/v1/rank", {"prompt": "p", "candidates": [str(i) for i in range(9)]}, "candidates"),  # over max_candidates
    ("/v1/compare_batch", {"items": [{"prompt": "p", "a": "x", "b": "y"}] * 501}, "items"),  # over max_items
    # A lone surrogate ("\ud800" in the JSON) is no text: no tokenizer takes it (it was a 500).
    ("/v1/compare", {"prompt": "p\ud800", "a": "x", "b": "y"}, "prompt"),
    ("/v1/compare_batch", {"items": [{"prompt": "p", "a": "x", "b": "\udc00y"}]}, "items.0.b"),
    ("/v1/rank", {"prompt": "p", "candidates": ["a", "b\ud83d"]}, "candidates.1"),
    ("/v1/rerank", {"query": "q\ud800", "documents": ["a", "b"]}, "query"),
    ("/v2/rerank", {"query": "q", "documents": ["a", {"text": "\ud800"}]}, "documents.1"),
])
def test_422_names_the_field(http, path, payload, field):
    body = json.dumps(payload).encode()  # ASCII escapes: httpx's json= cannot encode a lone surrogate
    r = http.post(path, content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == field
    assert field in body["error"]


def test_422_on_bad_json(http):
    r = http.post("/v1/compare", content=b'{"prompt": "p", "a": ', headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json()["field"] == "body" and "not valid JSON" in r.json()["error"]


def test_413_over_the_body_limit(http):
    big = {"prompt": "p" * 250_000, "a": "x", "b": "y"}
    r = http.post("/v1/compare", json=big, headers=AUTH)
    assert r.status_code == 413
    # Chunked upload without Content-Length is counted too.
    chunks = (b"x" * 50_000 for _ in range(6))
    r = http.post("/v1/compare", content=chunks, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413


def chunked_request(chunks: list[bytes]) -> bytes:
    """A complete chunked POST, written by hand so the framing does not depend on a client library."""
    head = (f"POST /v1/compare HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    body = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
    return head + body + b"0\r\n\r\n"


def read_response(raw: socket.socket) -> bytes:
    """Head and body of one response; the body may arrive in a later segment than the head."""
    reply = b""
    while b"\r\n\r\n" not in reply:
        if not (chunk := raw.recv(65536)):
            return reply
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length and (chunk := raw.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("n_chunks", [1, 6, 300])
def test_413_when_the_oversize_body_arrives_whole(server, n_chunks):
    """The whole request is on the wire before the server reads it, so the message that crosses the
    limit is (often) the last one (``more_body`` false): the guard must answer, not wait for more body."""
    chunks = [b"x" * (300_000 // n_chunks)] * n_chunks
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as raw:
        # The connection stays open, as a client waiting for its answer keeps it: a server that waits
        # for more body (or for a disconnect) after the last chunk never answers, and recv times out.
        raw.sendall(chunked_request(chunks))
        reply = read_response(raw)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"byte limit" in reply


def test_hostile_requests_do_not_crash_the_server(http, server):
    deep = b"[" * 100_000 + b"]" * 100_000  # recursion bomb inside the size limit
    r = http.post("/v1/compare", content=deep, headers={**AUTH, "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500
    r = http.post("/v1/compare", content=b"\xff\xfe", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:  # httpx refuses to send this
        raw.sendall(f"POST /v1/compare HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                    "Content-Length: abc\r\n\r\n{}".encode())
        assert raw.recv(64).startswith(b"HTTP/1.1 400")
    assert http.get("/health").json()["status"] == "ok"


# ---------------------------------------------------------------------------------------- batching
def test_concurrent_requests_are_merged_into_batches(http, server, rm):
    before = http.get("/health").json()["batching"]
    n = 12
    barrier = threading.Barrier(n)
    prompts = [f"Question {i}?" for i in range(n)]
    candidates = ["yes", "no", "maybe", "ask again"]

    def one(i: int):
        with httpx.Client(base_url=server, timeout=60) as c:
            barrier.wait()
            if i % 2:  # a knockout over 4 candidates queues two rounds through the same batcher
                body = {"prompt": prompts[i], "candidates": candidates, "method": "knockout"}
                return c.post("/v1/rank", json=body, headers=AUTH).json()["ranking"]
            return c.post("/v1/compare", json={"prompt": prompts[i], "a": "yes", "b": "no"}, headers=AUTH).json()[
                "prob_a"]

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    after = http.get("/health").json()["batching"]
    queued = n // 2 + 2 * (n // 2)  # compares + knockout rounds
    assert after["requests"] - before["requests"] == queued
    assert after["batches"] - before["batches"] < queued  # fewer model calls than queued requests
    assert after["max_batch_requests"] > 1
    for i, got in enumerate(results):
        if i % 2:
            assert got == rank_candidates(rm, prompts[i], candidates, method="knockout").ranking
        else:
            assert got == pytest.approx(spread(rm.compare(prompts[i], "yes", "no")), abs=1e-5)


def test_health_answers_while_the_model_is_busy(http, server):
    items = [{"prompt": f"Explain topic {i} in detail. " * 12, "a": "A long answer. " * 20, "b": "Short."}
             for i in range(200)]
    done = threading.Event()

    def big() -> None:
        with httpx.Client(base_url=server, timeout=120) as c:
            c.post("/v1/compare_batch", json={"items": items}, headers=AUTH)
        done.set()

    thread = threading.Thread(target=big)
    thread.start()
    seen_busy = False
    while not done.is_set():
        body = http.get("/health", timeout=5).json()  # would stall if the model ran on the event loop
        seen_busy = seen_busy or (body["busy"] and not done.is_set())
        time.sleep(0.005)
    thread.join()
    assert seen_busy


# ---------------------------------------------------------------------------------------- client
def test_client_round_trip(server, rm):
    items = [("2+2?", "4", "5"), ("Hi", "Hello!", "Go away.")]
    with RewardClient(server, api_key=KEY) as client:
        for both in (None, False):
            expected = [spread(p) for p in rm.compare_batch(items, both_orders=both)]
            assert [client.compare(*item, both_orders=both) for item in items] == pytest.approx(expected, abs=1e-5)
            assert client.compare_batch(items, both_orders=both) == pytest.approx(expected, abs=1e-5)
        candidates = ["a", "bb", "ccc"]
        ranked = client.rank("p", candidates, method="round_robin")
        assert [i for i, _ in ranked] == rank_candidates(rm, "p", candidates, method="round_robin").ranking
        assert client.best_of_n("p", candidates, method="round_robin") == ranked[0][0]
        assert client.health()["status"] == "ok"
        with pytest.raises(RewardClientError) as info:
            client.rank("p", [str(i) for i in range(20)])
        assert info.value.status == 422 and info.value.field == "candidates"
    with RewardClient(server) as anonymous, pytest.raises(RewardClientError) as info:
        anonymous.compare("p", "a", "b")
    assert info.value.status == 401


def test_client_retries_then_gives_up_on_a_dead_server():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    client = RewardClient(f"http://127.0.0.1:{port}", retries=2, backoff=0.05, timeout=2)
    started = time.perf_counter()
    with pytest.raises(RewardClientError, match="gave up after 3 attempts"):
        client.compare("p", "a", "b")
    assert time.perf_counter() - started >= 0.05 + 0.1  # two backoff sleeps happened


def test_client_retries_busy_answers_only():
    """429/502/503/504 are tried again (then succeed or give up); other errors are raised at once."""
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/v1/compare":
            return httpx.Response(503 if len(calls) < 3 else 200, json={"prob_a": 0.25})
        if request.url.path == "/health":
            return httpx.Response(429, text="slow down")
        return httpx.Response(422, json={"error": "bad candidates", "field": "candidates"})

    client = RewardClient("http://rm.test", retries=2, backoff=0.001, transport=httpx.MockTransport(answer))
    assert client.compare("p", "a", "b") == 0.25 and len(calls) == 3
    calls.clear()
    with pytest.raises(RewardClientError, match=r"gave up after 3 attempts \(HTTP 429: slow down\)"):
        client.health()
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(RewardClientError) as info:
        client.rank("p", ["x"])
    assert len(calls) == 1 and info.value.status == 422 and info.value.field == "candidates"


# ---------------------------------------------------------------------------------------- CLI
def test_tinyrm_serve_cli(tiny_bert):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    exe = os.path.join(os.path.dirname(sys.executable), "tinyrm")
    proc = subprocess.Popen([exe, "serve", "--model", tiny_bert, "--port", str(port), "--api-key", KEY,
                             "--max-batch-size", "4", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with RewardClient(f"http://127.0.0.1:{port}", api_key=KEY, retries=60, backoff=0.5, timeout=10) as client:
            assert client.health()["limits"]["max_batch_size"] == 4
            assert 0.0 <= client.compare("p", "a", "b") <= 1.0
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "docs at /docs" in out
