"""Serving under real faults (docs/reliability.md): SIGTERM with requests in flight, clients that go away.

A real ``tinyrm serve`` process gets SIGTERM with 8 requests inside (one being scored, the rest queued):
it answers them, refuses new connections and exits. Clients that disconnect mid-request leave the
micro-batch they were merged into intact, and the batcher survives cancelled requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tinyrm.serving.app import ServeConfig, create_app
from tinyrm.serving.batching import MicroBatcher

from .integration_helpers import save_opinionated_bert
from .test_serve import serving_app

# `tinyrm serve` with model latency added (each compare_batch call sleeps first), so that SIGTERM
# reliably lands while requests are queued, whatever the machine's speed.
SLOW_SERVE = """
import os, sys, time
from tinyrm.pairwise.model import RewardModel
compare_batch = RewardModel.compare_batch
def slow(self, *args, **kwargs):
    time.sleep(float(os.environ["TINYRM_TEST_BATCH_DELAY"]))
    return compare_batch(self, *args, **kwargs)
RewardModel.compare_batch = slow
from tinyrm.cli import main
sys.exit(main(sys.argv[1:]))
"""
DELAY, GRACE = 0.15, 5.0  # model latency per batch; --graceful-timeout, over twice what the 8 batches need


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()  # a new connection each time


def pairs(tag: str, n: int) -> list[dict]:
    return [{"prompt": f"{tag} question {i}?", "a": f"answer {i} " * (1 + i % 3), "b": "no idea"} for i in range(n)]


def test_sigterm_answers_accepted_requests_refuses_new_ones_and_exits(tiny_bert, tmp_path):
    driver = tmp_path / "slow_serve.py"
    driver.write_text(SLOW_SERVE)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TINYRM_TEST_BATCH_DELAY": str(DELAY)}
    log_path = tmp_path / "serve.log"  # a file, not a pipe nobody reads while the test runs
    # 32 pairs per request, per slice and per batch: each request is one batch, scored one after another.
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, str(driver), "serve", "--model", tiny_bert, "--port", str(port),
                                 "--max-batch-size", "32", "--slice-pairs", "32", "--max-wait-ms", "1",
                                 "--threads", "1", "--graceful-timeout", str(GRACE), "--log-level", "info"],
                                env=env, stdout=log_file, stderr=subprocess.STDOUT)
    answers: list[httpx.Response | Exception | None] = [None] * 8
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not start"
            try:
                health(url)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        # A client stalled mid-upload: without a graceful timeout it would hold the shutdown for ever.
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /v1/compare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{\"prompt\": ")
        barrier = threading.Barrier(8)

        def one(i: int) -> None:
            try:
                with httpx.Client(timeout=60) as client:
                    barrier.wait()
                    answers[i] = client.post(f"{url}/v1/compare_batch", json={"items": pairs(f"r{i}", 32)})
            except Exception as error:  # noqa: BLE001 - reported by the assertions below
                answers[i] = error

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        # All 8 inside the server (queued, being scored or answered) before the signal.
        while True:
            body = health(url)
            inside = body["queued"] + body["busy"] + body["batching"]["requests"]
            if inside == 8:
                break
            assert time.monotonic() < deadline and inside < 8, body
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        queued_at_signal = body["queued"]
        # New connections are refused once uvicorn's main loop (0.1 s ticks) has seen the signal; one
        # that got in before that is served like the others.
        refused = None
        while refused is None and time.monotonic() < signalled + 5:
            try:
                health(url)
            except httpx.ConnectError:
                refused = sum(answer is None for answer in answers)  # requests still unanswered then
            except httpx.TransportError:  # accepted as the shutdown began, then closed unanswered
                pass
            time.sleep(0.01)
        for thread in threads:
            thread.join(timeout=60)
        code = proc.wait(timeout=GRACE + 30)
        exited = time.monotonic() - signalled
        stalled.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert queued_at_signal >= 1, "no request was left queued (not yet batched) at SIGTERM"
    assert refused is not None, "new connections were still accepted 5 s after SIGTERM"
    assert refused >= 1, "refusal came only after every accepted request was answered"
    for i, answer in enumerate(answers):
        assert isinstance(answer, httpx.Response), f"request {i}: {answer!r}"
        assert answer.status_code == 200, answer.text
        probs = answer.json()["prob_a"]
        assert len(probs) == 32 and all(0.0 <= p <= 1.0 for p in probs)
    # uvicorn re-raises the SIGTERM it caught once shut down: the exit status says "terminated".
    assert code == -signal.SIGTERM, log[-3000:]
    # The stalled upload held the process until the graceful timeout cancelled it, and no longer.
    assert GRACE - 0.5 < exited < GRACE + 10, (exited, log[-3000:])
    assert "timeout graceful shutdown exceeded" in log and "Application shutdown complete" in log


# ------------------------------------------------------------------------ clients that go away
class Gated:
    """A model whose ``compare_batch`` waits for the test to open a gate: holds a batch mid-score."""

    def __init__(self, rm) -> None:
        self.rm, self.gate, self.batches = rm, threading.Event(), []

    def __getattr__(self, name):
        return getattr(self.rm, name)

    def compare_batch(self, items, **kwargs):
        self.batches.append(len(items))
        assert self.gate.wait(30)
        return self.rm.compare_batch(items, **kwargs)


def raw_request(port: int, items: list[dict]) -> socket.socket:
    body = json.dumps({"items": items}).encode()
    raw = socket.create_connection(("127.0.0.1", port))
    raw.sendall(b"POST /v1/compare_batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return raw


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_clients_that_disconnect_mid_request_do_not_disturb_their_batch(tmp_path, caplog):
    from tinyrm import RewardModel

    rm = RewardModel.from_pretrained(save_opinionated_bert(tmp_path / "bert"))  # answers spread over 0.1-0.9
    rm.engine.config.precision = "fp32"  # batched answers are compared with direct calls to 1e-5
    model = Gated(rm)
    # One batch of 5 requests x 4 pairs: it is scored only once full (the wait for company is 30 s).
    app = create_app(model, ServeConfig(max_batch_size=20, max_wait_ms=30_000))
    batcher = app.state.batcher
    good = {i: pairs(f"good{i}", 4) for i in range(4)}
    caplog.set_level(logging.WARNING)
    with serving_app(app) as (url, server):
        port = int(url.rsplit(":", 1)[1])
        early = raw_request(port, pairs("early", 4))  # goes away while its request is queued
        wait_for(lambda: batcher.queued == 1, "first request not queued")
        early.close()  # seen at once: the request leaves the queue, its pairs are never scored
        wait_for(lambda: batcher.stats.disconnected == 1 and batcher.queued == 0, "first disconnect not seen")
        late = raw_request(port, pairs("late", 4))  # goes away while its batch is being scored
        results: dict[int, httpx.Response] = {}

        def one(i: int) -> None:
            results[i] = httpx.post(f"{url}/v1/compare_batch", json={"items": good[i]}, timeout=60)

        threads = [threading.Thread(target=one, args=(i,)) for i in good]
        for thread in threads:
            thread.start()
        wait_for(lambda: model.batches, "no batch reached the model")
        late.close()
        # Only the 4 waiting clients' connections are left once the server has seen both disconnects.
        wait_for(lambda: len(server.server_state.connections) == 4, "disconnects not seen")
        wait_for(lambda: batcher.stats.disconnected == 2, "second disconnect not counted")
        model.gate.set()
        for thread in threads:
            thread.join(timeout=60)
        for i, items in good.items():
            assert results[i].status_code == 200, results[i].text
            direct = rm.compare_batch([(x["prompt"], x["a"], x["b"]) for x in items])
            assert results[i].json()["prob_a"] == pytest.approx(direct, abs=1e-5)
        # The early client's pairs never reached the model; the late one's were in the call in flight
        # (scored, the answer dropped): one batch of 5 requests, the 4 good ones and the late one.
        assert model.batches == [20]
        assert batcher.stats.requests_per_batch == {5: 1}
        # The server goes on: the next batch is answered, nothing is left queued or in flight.
        items = pairs("after", 20)
        r = httpx.post(f"{url}/v1/compare_batch", json={"items": items}, timeout=60)
        direct = rm.compare_batch([(x["prompt"], x["a"], x["b"]) for x in items])
        assert r.json()["prob_a"] == pytest.approx(direct, abs=1e-5)
        body = health(url)
        assert body["status"] == "ok" and body["queued"] == 0 and not body["busy"]
        assert not batcher._pending and not batcher._batch
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


class Held:
    """A fake model: P(a) = len(a) / (len(a) + len(b)); ``compare_batch`` waits for ``gate``."""

    device = "cpu"

    def __init__(self) -> None:
        self.gate, self.batches = threading.Event(), []

    def compare_batch(self, items, batch_size=8, both_orders=None):
        self.batches.append([a for _, a, _ in items])
        assert self.gate.wait(10)
        return [len(a) / (len(a) + len(b)) for _, a, b in items]


def expected(a: str, b: str = "bb") -> list[float]:
    return [len(a) / (len(a) + len(b))]


async def until(condition) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in 10 s")


def test_a_request_cancelled_while_queued_leaves_the_queue():
    async def scenario():
        model = Held()
        batcher = MicroBatcher(model, max_batch_size=10, max_wait_ms=200)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit([("p", a, "bb")])) for a in ("a", "aaa", "aaaaa")]
        await until(lambda: batcher.queued == 3)
        tasks[1].cancel()  # what a server does to a request whose client went away
        await until(lambda: batcher.queued == 2)
        model.gate.set()
        assert await tasks[0] == expected("a") and await tasks[2] == expected("aaaaa")
        assert tasks[1].cancelled()
        assert model.batches == [["a", "aaaaa"]]  # scored without the cancelled request
        assert await batcher.submit([("p", "aaaa", "bb")]) == expected("aaaa")
        assert not batcher._pending and batcher.stats.requests == 3
        await batcher.stop()

    asyncio.run(scenario())


def test_a_request_cancelled_while_scored_does_not_poison_its_batch(caplog):
    async def scenario():
        model = Held()
        batcher = MicroBatcher(model, max_batch_size=10, max_wait_ms=50)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit([("p", a, "bb")])) for a in ("a", "aaa", "aaaaa")]
        await until(lambda: batcher.busy)
        tasks[1].cancel()
        await asyncio.sleep(0.05)
        model.gate.set()
        assert await tasks[0] == expected("a") and await tasks[2] == expected("aaaaa")
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        assert model.batches == [["a", "aaa", "aaaaa"]] and batcher.stats.requests == 3
        assert await batcher.submit([("p", "aaaa", "bb")]) == expected("aaaa")
        await batcher.stop()

    asyncio.run(scenario())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_stop_finishes_queued_work_and_refuses_new_work():
    async def scenario():
        model = Held()
        batcher = MicroBatcher(model, max_batch_size=1, max_wait_ms=0)  # one request per batch
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit([("p", a, "bb")])) for a in ("a", "aaa", "aaaaa")]
        await until(lambda: batcher.busy and batcher.queued == 2)  # one being scored, two queued
        stopping = asyncio.create_task(batcher.stop())
        await until(lambda: batcher.closing)
        with pytest.raises(RuntimeError, match="shutting down"):  # the app answers 503
            await batcher.submit([("p", "late", "bb")])
        model.gate.set()
        await stopping
        assert [await t for t in tasks] == [expected("a"), expected("aaa"), expected("aaaaa")]
        assert model.batches == [["a"], ["aaa"], ["aaaaa"]]

    asyncio.run(scenario())


def test_stop_fails_what_it_cannot_finish_in_time():
    async def scenario():
        model = Held()
        batcher = MicroBatcher(model, max_batch_size=1, max_wait_ms=0)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit([("p", a, "bb")])) for a in ("a", "aaa")]
        await until(lambda: batcher.busy and batcher.queued == 1)
        await batcher.stop(drain_s=0.1)  # the model never answers in time
        for task in tasks:  # neither hangs: the scored one and the queued one both get the error
            with pytest.raises(RuntimeError, match="shutting down"):
                await task
        model.gate.set()  # let the model thread go

    asyncio.run(scenario())


def test_stop_does_not_wait_for_company_that_cannot_come():
    async def scenario():
        model = Held()
        model.gate.set()
        batcher = MicroBatcher(model, max_batch_size=10, max_wait_ms=60_000)
        await batcher.start()
        task = asyncio.create_task(batcher.submit([("p", "aaa", "bb")]))
        await until(lambda: batcher.queued == 1)
        started = time.monotonic()
        await batcher.stop()
        assert await task == expected("aaa") and time.monotonic() - started < 5

    asyncio.run(scenario())


def test_graceful_timeout_must_be_positive():
    with pytest.raises(ValueError, match="graceful_timeout_s must be > 0"):
        ServeConfig(graceful_timeout_s=0)
