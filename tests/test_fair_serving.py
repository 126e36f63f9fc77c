"""The service under load (docs/ranking-and-serving.md, "Under load"): fair slices, deadlines, load shedding,
disconnects, /metrics. A real uvicorn server on loopback around a tiny BERT whose forward calls the test
lets through one at a time (``Stepped``), so every bound is stated in model calls, not seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
import torch

from tinyrm.serving.app import ServeConfig, create_app
from tinyrm.serving.batching import MicroBatcher

from .integration_helpers import save_opinionated_bert
from .test_serve import serving_app


class Stepped:
    """A model whose forward calls wait for a permit from the test (``step``), unless ``run_free`` was called."""

    def __init__(self, rm) -> None:
        self.rm, self.calls = rm, []
        self.permits, self.free = threading.Semaphore(0), threading.Event()

    def __getattr__(self, name):
        return getattr(self.rm, name)

    def compare_batch(self, items, **kwargs):
        self.calls.append([a for _, a, _ in items])
        if not self.free.is_set():
            assert self.permits.acquire(timeout=60), "the test never let this call through"
        return self.rm.compare_batch(items, **kwargs)

    def step(self, n: int = 1) -> None:
        self.permits.release(n)

    def run_free(self) -> None:
        self.free.set()
        self.permits.release(10_000)

    def hold(self) -> None:
        """Hold calls again (those not yet started)."""
        self.permits = threading.Semaphore(0)
        self.free.clear()


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def pairs(tag: str, n: int) -> list[dict]:
    return [{"prompt": f"{tag} question {i}?", "a": f"{tag} answer {i}", "b": "no idea"} for i in range(n)]


def triples(items: list[dict]) -> list[tuple[str, str, str]]:
    return [(x["prompt"], x["a"], x["b"]) for x in items]


def raw_post(port: int, path: str, body: dict) -> socket.socket:
    """A request on a raw socket, so the test can hang up on it."""
    data = json.dumps(body).encode()
    raw = socket.create_connection(("127.0.0.1", port))
    raw.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (path.encode(), len(data), data))
    return raw


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    from tinyrm import RewardModel

    rm = RewardModel.from_pretrained(save_opinionated_bert(tmp_path_factory.mktemp("bert")))
    rm.engine.config.precision = "fp32"  # served answers are compared with direct calls to 1e-5
    return rm


@pytest.fixture
def stepped(rm):
    model = Stepped(rm)
    yield model
    model.run_free()  # never leave a model thread waiting


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_a_small_request_waits_for_two_calls_not_for_a_maximum_size_one(stepped):
    """The documented maximum (4,096 items) is being scored; a 1-pair request sent meanwhile is answered after
    the call in flight and one more (which it shares with a slice of the large one). Then the large
    request's client hangs up: its remaining slices are dropped."""
    config = ServeConfig()  # the documented limits: max_items 4096; on a CPU calls of 16 pairs, slices of 4
    assert config.max_items == 4096
    app = create_app(stepped, config)
    batcher = app.state.batcher
    call = batcher.max_batch_size
    assert (call, batcher.slice_pairs) == (16, 4)  # the CPU defaults (64 and 16 on a GPU: the next test)
    with serving_app(app) as (url, _):
        large = raw_post(port_of(url), "/v1/compare_batch", {"items": pairs("large", config.max_items)})
        wait_for(lambda: len(stepped.calls) == 1, "the large request never reached the model")
        # One call: 16 of its 4096 pairs, the longest first (slices are cut from the pairs sorted by length).
        longest = sorted(range(config.max_items), key=lambda i: -len(f"large question {i}?large answer {i}no idea"))
        assert stepped.calls[0] == [f"large answer {i}" for i in longest[:call]]
        assert httpx.get(f"{url}/health").json()["limits"]["max_batch_size"] == call
        answer: dict = {}
        small = threading.Thread(target=lambda: answer.update(r=httpx.post(
            f"{url}/v1/compare", json={"prompt": "2+2?", "a": "4", "b": "5"}, timeout=60)))
        small.start()
        wait_for(lambda: batcher.queued == 2, "the small request was not queued")
        stepped.step()  # the call in flight ends; the next one takes a slice of each request, round-robin
        wait_for(lambda: len(stepped.calls) == 2, "no second call")
        assert "4" in stepped.calls[1] and len(stepped.calls[1]) == call
        stepped.step()
        small.join(timeout=60)
        assert answer["r"].status_code == 200, answer["r"].text
        assert answer["r"].json()["prob_a"] == pytest.approx(stepped.rm.compare("2+2?", "4", "5"), abs=1e-5)
        assert batcher.stats.batches == 2  # answered after 2 calls, while 4096 - 31 large pairs still wait
        assert batcher.outstanding_pairs == config.max_items - call - (call - 1)
        large.close()  # the large request's client goes away: its remaining slices are dropped
        wait_for(lambda: batcher.stats.disconnected == 1, "the disconnect was not seen")
        stepped.run_free()
        wait_for(lambda: not batcher.busy and batcher.outstanding_pairs == 0, "work left behind")
        scored_large = sum(len(c) for c in stepped.calls) - 1
        assert scored_large < call * 4  # at most the call in flight when it left, not 4096 pairs
        health = httpx.get(f"{url}/health").json()
        assert health["queued"] == 0 and health["queued_pairs"] == 0 and health["batching"]["disconnected"] == 1


def test_call_and_pass_sizes_default_to_the_device():
    """Wide calls on a GPU (64 pairs, both orders in one pass); on a CPU, where a call's time is what a small
    request waits for, 16 pairs in passes of 8 sequences (docs/ranking-and-serving.md, "Under load"). Slices are a
    quarter of a call, so a request arriving behind a large one shares the next call."""
    for device, calls, rows in (("cpu", 16, 8), ("cuda", 64, 128)):
        batcher = MicroBatcher(SimpleNamespace(device=torch.device(device)), None, 5)
        assert (batcher.max_batch_size, batcher.forward_batch_size, batcher.slice_pairs) == (calls, rows, calls // 4)
        batcher.executor.shutdown()
    explicit = MicroBatcher(SimpleNamespace(device=torch.device("cuda")), 4, 5)
    assert (explicit.max_batch_size, explicit.forward_batch_size, explicit.slice_pairs) == (4, 8, 1)
    explicit.executor.shutdown()


def test_concurrent_sliced_requests_get_exactly_their_own_answers(rm):
    """Slices of several requests share calls; each answer equals ``compare_batch`` on that request alone."""
    app = create_app(rm, ServeConfig(max_batch_size=16, slice_pairs=5, max_wait_ms=200))
    sizes = {"a": 37, "b": 1, "c": 23, "d": 2}
    answers: dict[str, httpx.Response] = {}
    with serving_app(app) as (url, _):
        def one(tag: str) -> None:
            answers[tag] = httpx.post(f"{url}/v1/compare_batch", json={"items": pairs(tag, sizes[tag])}, timeout=60)

        threads = [threading.Thread(target=one, args=(tag,)) for tag in sizes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        stats = app.state.batcher.stats
    for tag, n in sizes.items():
        assert answers[tag].status_code == 200, answers[tag].text
        assert answers[tag].json()["prob_a"] == pytest.approx(rm.compare_batch(triples(pairs(tag, n))), abs=1e-5)
    assert stats.pairs == sum(sizes.values()) and stats.max_batch_pairs <= 16
    assert stats.slices >= sum(-(-n // 5) for n in sizes.values())  # every request cut into slices of <= 5


def test_a_request_the_model_cannot_take_fails_alone_not_its_call(stepped):
    """A call that fails is scored again request by request, so only the request that causes the failure gets
    the error (the HTTP schemas keep a lone surrogate out; here one reaches the batcher directly)."""
    async def scenario():
        batcher = MicroBatcher(stepped, max_batch_size=16, max_wait_ms=1000)
        await batcher.start()
        good, bad, other = pairs("good", 3), [("p", "bad\ud800", "b")], pairs("other", 2)
        tasks = [asyncio.create_task(batcher.submit(x)) for x in (triples(good), bad, triples(other))]
        stepped.run_free()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return results

    answers = asyncio.run(scenario())
    assert answers[0] == pytest.approx(stepped.rm.compare_batch(triples(pairs("good", 3))), abs=1e-5)
    assert answers[2] == pytest.approx(stepped.rm.compare_batch(triples(pairs("other", 2))), abs=1e-5)
    assert isinstance(answers[1], ValueError) and "lone surrogate" in str(answers[1])
    merged = [a for _, a, _ in triples(pairs("good", 3))] + ["bad\ud800"] + ["other answer 0", "other answer 1"]
    assert [sorted(c) for c in stepped.calls] == [sorted(merged), sorted(merged[:3]), ["bad\ud800"],
                                                  sorted(merged[4:])]


def test_a_failed_call_rescores_only_the_requests_still_waiting(stepped):
    """The re-scoring after a failed call skips a request whose deadline passed meanwhile: no call for it."""
    async def scenario():
        batcher = MicroBatcher(stepped, max_batch_size=16, max_wait_ms=50)
        await batcher.start()
        good = asyncio.create_task(batcher.submit(triples(pairs("good", 2))))
        bad = asyncio.create_task(batcher.submit([("p", "bad\ud800", "b")]))
        late = asyncio.create_task(batcher.submit(triples(pairs("late", 1)), timeout_s=1.5))  # re-scored last
        stepped.step(2)  # the merged call (it fails) and the first request's call alone
        with pytest.raises(RuntimeError, match="timed out"):
            await late  # its deadline passes while the next re-score (bad's) is held
        stepped.run_free()
        results = await asyncio.gather(good, bad, return_exceptions=True)
        await batcher.stop()
        return results

    good, bad = asyncio.run(scenario())
    assert len(good) == 2 and isinstance(bad, ValueError)
    merged = stepped.calls[0]
    assert "late answer 0" in merged and "bad\ud800" in merged  # the path ran: late was in the failed call
    assert ["late answer 0"] not in stepped.calls[1:]  # and got no call of its own after its deadline


def test_a_tournament_waiting_for_a_thread_meets_its_deadline(stepped):
    """Rank/rerank tournaments run in worker threads; one that waits for a free thread (all held by tournaments
    waiting on the model) still gets its 503 at its deadline, not once a thread frees up (the model is held
    throughout: no call is let through)."""
    app = create_app(stepped, ServeConfig(max_wait_ms=1, request_timeout_s=60))
    threads = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor
    answers: dict[str, httpx.Response] = {}
    with serving_app(app) as (url, _):
        def rank(tag: str, timeout: str = "60") -> None:
            answers[tag] = httpx.post(f"{url}/v1/rank", json={"prompt": tag, "candidates": ["a", "bb", "ccc"]},
                                      headers={"X-Request-Timeout": timeout}, timeout=60)

        holders = [threading.Thread(target=rank, args=(f"held {i}",)) for i in range(threads)]
        for thread in holders:
            thread.start()
        batcher = app.state.batcher  # every thread's tournament is in line (or in the held call)
        wait_for(lambda: sum(e.alive for e in batcher._pending) >= threads, "the tournaments never queued")
        rank("late", timeout="0.5")
        calls = len(stepped.calls)
        stepped.run_free()
        for thread in holders:
            thread.join(timeout=120)
    assert calls <= 1  # answered while the model was held
    assert answers["late"].status_code == 503 and "timed out after 0.5 s" in answers["late"].json()["error"]
    # ... and the held ones were answered once let through (before, the late one was answered only after the held
    # call gave up on its permit and failed them all)
    assert all(answers[f"held {i}"].status_code == 200 for i in range(threads))


def test_a_reservation_counts_against_the_queue_bound_until_released(rm):
    batcher = MicroBatcher(rm, 4, 5, max_queued_pairs=10)
    with batcher.reserved(8):
        assert batcher.outstanding_pairs == 8
        with pytest.raises(RuntimeError, match="overloaded"):
            batcher.admit(3)  # 8 held + 3 > 10: shed before any work
        batcher.admit(2)
    assert batcher.outstanding_pairs == 0 and batcher.stats.shed == 1
    batcher.executor.shutdown()


def test_a_round_robin_that_can_never_fit_is_a_422_not_an_endless_503(rm):
    app = create_app(rm, ServeConfig(max_queued_pairs=4096, max_items=4096, max_candidates=100, max_documents=100))
    many = [f"answer {i}" for i in range(100)]  # 4,950 pairs at once > 4,096
    with serving_app(app) as (url, _):
        r = httpx.post(f"{url}/v1/rank", json={"prompt": "p", "candidates": many, "method": "round_robin"}, timeout=60)
        assert r.status_code == 422 and r.json()["field"] == "candidates", r.text
        assert "4950 pairs at once, over this server's --max-queued-pairs 4096" in r.json()["error"]
        r = httpx.post(f"{url}/v2/rerank", json={"query": "q", "documents": many}, timeout=60)
        assert r.status_code == 422 and r.json()["field"] == "documents", r.text
        assert app.state.batcher.stats.pairs == 0  # refused before any model work


def test_a_deadline_gives_503_with_retry_after_and_drops_the_rest(stepped):
    app = create_app(stepped, ServeConfig(request_timeout_s=60))
    batcher = app.state.batcher
    with serving_app(app) as (url, _):
        r = httpx.post(f"{url}/v1/compare_batch", json={"items": pairs("late", 300)},
                       headers={"X-Request-Timeout": "0.5"}, timeout=60)  # the first call is held past it
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert "timed out after 0.5 s" in r.json()["error"] and "dropped" in r.json()["error"]
        assert len(stepped.calls) == 1 and batcher.stats.timed_out == 1
        stepped.run_free()
        wait_for(lambda: not batcher.busy, "the call in flight never ended")
        assert len(stepped.calls) == 1 and batcher.outstanding_pairs == 0  # the other 236 pairs were never scored
        # A client may ask for less than the server's deadline, never for more; a bad value is a 422.
        ok = httpx.post(f"{url}/v1/compare", json={"prompt": "p", "a": "x", "b": "y"},
                        headers={"X-Request-Timeout": "1e9"}, timeout=60)
        assert ok.status_code == 200
        for bad in ("soon", "0", "-1", "nan"):
            r = httpx.post(f"{url}/v1/compare", json={"prompt": "p", "a": "x", "b": "y"},
                           headers={"X-Request-Timeout": bad}, timeout=60)
            assert r.status_code == 422 and "X-Request-Timeout" in r.json()["field"], (bad, r.text)


def test_a_request_past_the_queue_bound_is_shed_at_once(stepped):
    app = create_app(stepped, ServeConfig(max_items=100, max_queued_pairs=100))
    batcher = app.state.batcher
    with serving_app(app) as (url, _):
        held: dict = {}
        first = threading.Thread(target=lambda: held.update(r=httpx.post(
            f"{url}/v1/compare_batch", json={"items": pairs("first", 80)}, timeout=60)))
        first.start()
        wait_for(lambda: len(stepped.calls) == 1, "the first request never reached the model")
        r = httpx.post(f"{url}/v1/compare_batch", json={"items": pairs("over", 30)}, timeout=60)
        # Refused while the model is still held on the first call: it never joined the queue.
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
        assert "overloaded" in r.json()["error"] and "limit of 100" in r.json()["error"]
        assert len(stepped.calls) == 1 and batcher.stats.shed == 1 and batcher.outstanding_pairs == 80
        # RewardClient waits what Retry-After says, then retries (the model is let go during its wait).
        from tinyrm.serving.client import RewardClient

        waits: list[tuple[int, float, str]] = []

        def on_retry(attempt: int, wait_s: float, reason: str) -> None:
            waits.append((attempt, wait_s, reason))
            stepped.run_free()

        with RewardClient(url, retries=3, on_retry=on_retry) as client:
            probs = client.compare_batch(triples(pairs("over", 30)))
        assert probs == pytest.approx(stepped.rm.compare_batch(triples(pairs("over", 30))), abs=1e-5)
        assert waits[0][1] == float(r.headers["retry-after"]) and "503" in waits[0][2]
        first.join(timeout=60)
        assert held["r"].status_code == 200
        stepped.hold()
        wait_for(lambda: not batcher.busy and batcher.outstanding_pairs == 0, "work left behind")
        held.clear()
        first = threading.Thread(target=lambda: held.update(r=httpx.post(
            f"{url}/v1/compare_batch", json={"items": pairs("first", 80)}, timeout=60)))
        first.start()
        wait_for(lambda: batcher.busy and batcher.outstanding_pairs == 80, "the model was not held again")
        fits = threading.Thread(target=lambda: held.update(fits=httpx.post(
            f"{url}/v1/compare_batch", json={"items": pairs("fits", 20)}, timeout=60)))
        fits.start()  # 80 + 20 is within the bound
        wait_for(lambda: batcher.outstanding_pairs == 100, "the fitting request was not accepted")
        stepped.run_free()
        first.join(timeout=60)
        fits.join(timeout=60)
        assert held["r"].status_code == 200 and held["fits"].status_code == 200
        assert ServeConfig().max_queued_pairs >= ServeConfig().max_items  # the largest request always fits
        with pytest.raises(ValueError, match="max_queued_pairs"):
            ServeConfig(max_items=100, max_queued_pairs=99)


def test_metrics_in_prometheus_text_format(rm):
    from prometheus_client.parser import text_string_to_metric_families

    app = create_app(rm, ServeConfig())
    with serving_app(app) as (url, _):
        for i in range(3):
            assert httpx.post(f"{url}/v1/compare", json={"prompt": f"q{i}", "a": "x", "b": "y"}).status_code == 200
        r = httpx.get(f"{url}/metrics")
        health = httpx.get(f"{url}/health").json()["batching"]
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {s.name: s.value for family in text_string_to_metric_families(r.text) for s in family.samples
               if not s.labels}
    assert samples["tinyrm_requests_total"] == health["requests"] == 3
    assert samples["tinyrm_pairs_total"] == 3 and samples["tinyrm_queue_pairs"] == 0
    assert samples["tinyrm_request_latency_seconds_count"] == 3 == health["latency_ms"]["count"]
    for name in ("tinyrm_slices_total", "tinyrm_requests_shed_total", "tinyrm_requests_timed_out_total",
                 "tinyrm_requests_disconnected_total", "tinyrm_queue_requests", "tinyrm_outstanding_pairs"):
        assert name in samples
    assert health["latency_ms"]["p50"] is not None and health["latency_ms"]["p99"] >= health["latency_ms"]["p50"]
