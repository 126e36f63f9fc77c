"""RewardClient retries: the server's Retry-After honoured, against a scripted peer on loopback.

The peer is a tiny FastAPI app served by uvicorn (``serving_app``) that answers each request with the
next scripted ``(status, headers)``; the waits are the ones tenacity computed (``on_retry``), not
wall-clock measurements.
"""

from __future__ import annotations

from email.utils import formatdate

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tinyrm.serving.client import RewardClient, RewardClientError, parse_retry_after

from .test_serve import serving_app


class Script:
    """The answers the peer gives, in order (after the last one: 200)."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.calls = 0
        self.deadlines: list[str | None] = []  # each request's X-Request-Timeout


@pytest.fixture(scope="module")
def peer():
    script = Script()
    app = FastAPI()

    @app.post("/v1/compare")
    async def compare(request: Request) -> JSONResponse:
        script.calls += 1
        script.deadlines.append(request.headers.get("x-request-timeout"))
        status, headers = script.answers.pop(0) if script.answers else (200, {})
        if status != 200:
            return JSONResponse(status_code=status, content={"error": "busy"}, headers=headers)
        return JSONResponse({"prob_a": 0.25})

    @app.post("/v1/compare_batch")
    async def broken() -> JSONResponse:  # an error body that is JSON but not tinyrm's object (a proxy's, say)
        return JSONResponse(status_code=500, content="boom")

    with serving_app(app) as (url, _):
        yield url, script


def scripted(peer, answers: list[tuple[int, dict[str, str]]]) -> tuple[str, Script]:
    url, script = peer
    script.answers, script.calls, script.deadlines = list(answers), 0, []
    return url, script


def client_for(url: str, waits: list[tuple[int, float]], **kw) -> RewardClient:
    def on_retry(attempt: int, wait_s: float, _reason: str) -> None:
        waits.append((attempt, wait_s))

    # backoff far from 1 s, so a Retry-After wait cannot be mistaken for a backoff one
    return RewardClient(url, timeout=10, backoff=0.01, on_retry=on_retry, **kw)


def test_503_retry_after_seconds_is_honoured(peer):
    url, script = scripted(peer, [(503, {"Retry-After": "1"}), (503, {"Retry-After": "1"})])
    waits: list[tuple[int, float]] = []
    with client_for(url, waits, retries=3) as client:
        assert client.compare("p", "a", "b") == 0.25
    assert script.calls == 3
    assert waits == [(1, 1.0), (2, 1.0)]
    # each attempt told the server its deadline, under the client's 10 s read timeout
    assert script.deadlines == ["9.000"] * 3


def test_without_retry_after_the_client_backs_off_exponentially(peer):
    url, script = scripted(peer, [(503, {}), (429, {}), (503, {"Retry-After": "0"})])
    waits: list[tuple[int, float]] = []
    with client_for(url, waits, retries=3) as client:
        assert client.compare("p", "a", "b") == 0.25
    assert script.calls == 4
    assert waits == [(1, pytest.approx(0.01)), (2, pytest.approx(0.02)), (3, 0.0)]


def test_retry_after_as_an_http_date(peer):
    # A date already past (an HTTP date has whole seconds): retry at once, not after the backoff.
    url, script = scripted(peer, [(503, {"Retry-After": formatdate(0, usegmt=True)})])
    waits: list[tuple[int, float]] = []
    with client_for(url, waits) as client:
        assert client.compare("p", "a", "b") == 0.25
    assert script.calls == 2 and waits == [(1, 0.0)]


def test_retry_after_over_the_cap_is_a_clear_error_at_once(peer):
    url, script = scripted(peer, [(503, {"Retry-After": "120"})])
    waits: list[tuple[int, float]] = []
    with client_for(url, waits, max_retry_after=30) as client, pytest.raises(RewardClientError) as info:
        client.compare("p", "a", "b")
    assert script.calls == 1 and waits == []
    assert info.value.status == 503
    assert "asked to wait 120 s" in str(info.value) and "max_retry_after of 30 s" in str(info.value)


def test_gives_up_after_the_retries_even_with_retry_after(peer):
    url, script = scripted(peer, [(503, {"Retry-After": "0"})] * 5)
    waits: list[tuple[int, float]] = []
    with client_for(url, waits, retries=2) as client, pytest.raises(RewardClientError, match="gave up after 3") as info:
        client.compare("p", "a", "b")
    assert script.calls == 3 and waits == [(1, 0.0), (2, 0.0)]
    assert info.value.status == 503  # overload, told apart from a server that never answered


def test_an_error_body_that_is_not_an_object_is_shown_as_sent(peer):
    url, _ = scripted(peer, [])
    with client_for(url, []) as client, pytest.raises(RewardClientError, match='HTTP 500: "boom"') as info:
        client.compare_batch([("p", "a", "b")])
    assert info.value.status == 500


def test_an_address_without_a_scheme_fails_at_once():
    waits: list[tuple[int, float]] = []
    with client_for("127.0.0.1:9", waits) as client, pytest.raises(RewardClientError, match="127.0.0.1:9"):
        client.compare("p", "a", "b")
    assert waits == []  # a setup error: no retry fixes it


@pytest.mark.parametrize(("value", "seconds"), [
    ("1", 1.0), (" 30 ", 30.0), ("1.5", 1.5), ("-3", 0.0),
    ("Thu, 01 Jan 1970 00:00:10 GMT", 5.0),  # 10 s after the epoch, seen from 5 s after it
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),  # in the past: at once
    ("Thursday, 01-Jan-70 00:00:10 GMT", 5.0), ("Thu Jan  1 00:00:10 1970", 5.0),  # RFC 850 and asctime forms
    (None, None), ("", None), ("soon", None), ("nan", None), ("inf", None),
])
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value, now=5.0) == seconds


def recording_client(sent: list[tuple[str, dict]]) -> RewardClient:
    """A client whose transport records each request's path and JSON body and answers as the server would."""
    import json

    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append((request.url.path, body))
        if request.url.path == "/v1/rank":
            n = len(body["candidates"])
            return httpx.Response(200, json={"ranking": list(range(n)), "scores": [float(-i) for i in range(n)]})
        return httpx.Response(200, json={"scores": [0.5] * len(body["steps"]), "reward": 0.5})

    return RewardClient("http://peer", transport=httpx.MockTransport(answer), retries=0)


def test_rank_checks_candidates_before_sending_as_the_local_rank_does():
    sent: list[tuple[str, dict]] = []
    with recording_client(sent) as client:
        with pytest.raises(ValueError, match="^candidates must be a list of strings, got str$"):
            client.rank("q", "abc")  # each character was a candidate
        with pytest.raises(ValueError, match="^candidates must not be empty$"):
            client.best_of_n("q", [])
        with pytest.raises(ValueError, match=r"^candidates\[1\] must be a string, got NoneType$"):
            client.rank("q", ["a", None])
        assert sent == []  # refused here, nothing sent
        assert client.rank("q", (c for c in ["a", "b"])) == [(0, 0.0), (1, -1.0)]
    assert sent == [("/v1/rank", {"prompt": "q", "candidates": ["a", "b"], "method": "knockout"})]


def test_score_steps_splits_a_text_as_the_local_model_does():
    from tinyrm.process.steps import split

    text = "Step 1: 2 + 2 = 4.\nStep 2: The answer is 4."
    sent: list[tuple[str, dict]] = []
    with recording_client(sent) as client:
        assert client.score_steps("What is 2 + 2?", text)["scores"] == [0.5, 0.5]  # 2 steps, not 44 characters
        client.score_steps("p", (s for s in ["a", "b"]), aggregate="min")
        client.score_steps("p", "  \n ")  # no step: one empty step, judged by the model
        client.score_steps("p", [])
    assert [body["steps"] for _, body in sent] == [split(text), ["a", "b"], [""], [""]]
    assert split(text) == ["2 + 2 = 4.", "The answer is 4."] and sent[1][1]["aggregate"] == "min"
