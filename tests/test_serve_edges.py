"""Serving edges (review findings 1, 9, 10): stop() after a request died while its call waited for company, a
lone request whose deadline is shorter than --max-wait-ms, ServeConfig values the CLI must refuse in one line,
and request bodies that are not UTF-8 JSON (or repeat X-Request-Timeout).
"""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest

from tinyrm.cli import main
from tinyrm.serving.app import ServeConfig
from tinyrm.serving.batching import MicroBatcher

from .test_faults_serve import until
from .test_serve import running_server

STOP_BOUND_S = 10.0  # a failure detector, not a latency bound: a stop() that works returns in milliseconds


class Model:
    """A fake pairwise model: P(a) = len(a) / (len(a) + len(b))."""

    device = "cpu"

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def compare_batch(self, items, batch_size=8, both_orders=None):
        self.batches.append([a for _, a, _ in items])
        return [len(a) / (len(a) + len(b)) for _, a, b in items]


async def stops(batcher: MicroBatcher) -> None:
    """``batcher.stop()`` returns within STOP_BOUND_S. Watched with asyncio.wait, not wait_for: the old stop()
    swallowed the cancel that wait_for sends at its timeout and returned, so a hang looked like a return."""
    stopping = asyncio.create_task(batcher.stop())
    done, _ = await asyncio.wait({stopping}, timeout=STOP_BOUND_S)
    assert stopping in done, f"stop() still running after {STOP_BOUND_S} s"
    stopping.result()
    assert batcher._task.done()


def test_stop_returns_after_a_request_died_while_its_call_waited_for_company():
    """The hang of `tinyrm serve` on SIGTERM: the only request's client went away while the batcher waited (a
    minute) for company; stop() set the wakeup and cancelled the loop at once, and on Python 3.11 wait_for swallowed
    that cancel, so the loop went back to sleep and stop() never returned."""

    async def scenario():
        model = Model()
        batcher = MicroBatcher(model, max_batch_size=10, max_wait_ms=60_000)
        await batcher.start()
        task = asyncio.create_task(batcher.submit([("p", "aaa", "bb")]))
        await until(lambda: batcher.queued == 1)
        await asyncio.sleep(0.05)  # the loop is in its wait for company now
        task.cancel()  # what the app does when the client goes away
        await until(lambda: batcher.queued == 0)
        await stops(batcher)
        assert model.batches == [] and batcher.stats.disconnected == 1

    asyncio.run(scenario())


def test_a_lone_request_with_a_short_deadline_is_scored_not_timed_out():
    """A deadline shorter than --max-wait-ms caps the wait for company (at half the time left), so a lone request on
    an idle server is answered, not given 503 after waiting for company that never came; stop() then returns."""

    async def scenario():
        model = Model()
        batcher = MicroBatcher(model, max_batch_size=10, max_wait_ms=60_000, timeout_s=600)
        await batcher.start()
        answer = await asyncio.wait_for(batcher.submit([("p", "aaa", "bb")], timeout_s=1.0), STOP_BOUND_S)
        assert answer == [0.6] and batcher.stats.timed_out == 0
        # The server's own deadline caps it too: a lone request under --request-timeout 1.
        batcher.timeout_s = 1.0
        assert await asyncio.wait_for(batcher.submit([("p", "a", "bbb")]), STOP_BOUND_S) == [0.25]
        await stops(batcher)

    asyncio.run(scenario())


@pytest.mark.parametrize("field, value", [
    ("max_wait_ms", math.nan), ("max_wait_ms", math.inf), ("request_timeout_s", math.inf),
    ("request_timeout_s", math.nan), ("port", -1), ("port", 65536), ("threads", 0), ("threads", -1)])
def test_serve_config_refuses_values_that_fail_later(field, value):
    with pytest.raises(ValueError, match=field):
        ServeConfig(**{field: value})
    ServeConfig(port=0, threads=1)  # port 0: any free port


@pytest.mark.parametrize("option, value", [("--port", "70000"), ("--port", "-1"), ("--threads", "0"),
                                           ("--max-wait-ms", "inf"), ("--request-timeout", "nan")])
def test_the_cli_refuses_them_in_one_line_before_loading_a_model(option, value, capsys, tmp_path):
    code = main(["serve", "--model", str(tmp_path / "no-such-model"), option, value])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("tinyrm serve: error: "), err
    assert "no-such-model" not in err  # refused before the model was looked for


@pytest.fixture(scope="module")
def url():
    with running_server(Model(), ServeConfig(max_wait_ms=0)) as base:
        yield base


PAIR = b'{"prompt": "q", "a": "aaa", "b": "bb"}'


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data",
                                          None])
def test_a_json_object_sent_as_another_content_type_is_a_415_naming_it(url, content_type):
    """curl -d sends application/x-www-form-urlencoded; FastAPI reads no JSON from it (nor without a Content-Type)
    and said "Input should be a valid dictionary" of what is a JSON object."""
    r = httpx.post(f"{url}/v1/compare", content=PAIR, headers={"Content-Type": content_type} if content_type else {})
    assert r.status_code == 415, r.text
    assert r.json() == {"error": f"Content-Type must be application/json, got {content_type or 'none'}",
                        "field": "body"}


def test_the_document_lists_the_415(url):
    for path, item in httpx.get(f"{url}/openapi.json").json()["paths"].items():
        if path.startswith("/v"):
            assert item["post"]["responses"]["415"]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/ErrorBody"), path


def test_a_body_that_is_not_utf8_is_a_422_naming_the_byte(url):
    r = httpx.post(f"{url}/v1/compare", content=b'{"prompt": "\xe9", "a": "a", "b": "b"}',
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json() == {"error": "body is not UTF-8 text (byte 12: 0xe9)", "field": "body"}


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "application/vnd.api+json"])
def test_json_bodies_are_still_served(url, content_type):
    """application/json, with parameters, or a +json type (as FastAPI reads them), non-ASCII text included."""
    r = httpx.post(f"{url}/v1/compare", content='{"prompt": "q", "a": "ééé", "b": "bb"}'.encode(),
                   headers={"Content-Type": content_type})
    assert r.status_code == 200 and r.json() == {"prob_a": 0.6}, r.text


def test_other_paths_keep_their_answers(url):
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert httpx.post(f"{url}/v1/nope", content=PAIR, headers=form).status_code == 404
    assert httpx.post(f"{url}/health", content=PAIR, headers=form).status_code == 405


def test_two_x_request_timeout_headers_are_a_422_naming_the_header(url):
    r = httpx.post(f"{url}/v1/compare", content=PAIR,
                   headers=[("Content-Type", "application/json"), ("X-Request-Timeout", "5"),
                            ("X-Request-Timeout", "abc")])
    assert r.status_code == 422, r.text
    assert r.json() == {"error": "X-Request-Timeout given 2 times: send it once", "field": "header.X-Request-Timeout"}
    bad = httpx.post(f"{url}/v1/compare", content=PAIR,
                     headers={"Content-Type": "application/json", "X-Request-Timeout": "abc"})
    assert bad.status_code == 422 and bad.json()["field"] == "header.X-Request-Timeout"  # named alike
    one = httpx.post(f"{url}/v1/compare", content=PAIR,
                     headers={"Content-Type": "application/json", "X-Request-Timeout": "5"})
    assert one.status_code == 200
