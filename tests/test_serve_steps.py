"""``/v1/score_steps`` under load: step requests go through the batcher's line as pairs do (sliced, merged,
round-robin with pair requests, under the deadline and the queue bound). A real uvicorn server on loopback around a
tiny trained process model whose calls the test lets through one at a time, so every bound is stated in model
calls, not seconds.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from tinyrm.serving.app import ServeConfig, create_app

from .process_helpers import BAD, PROBLEM
from .test_fair_serving import Stepped, wait_for
from .test_serve import STEP_ROWS, serving_app

LONG = [f"Step {i}: {i} + {i} = {2 * i}." for i in range(12)]


class SteppedSteps(Stepped):
    """``Stepped`` for both kinds of call: ``calls`` records ``("pairs" | "steps", units)``."""

    def compare_batch(self, items, **kwargs):
        self.calls.append(("pairs", len(items)))
        self._wait()
        return self.rm.compare_batch(items, **kwargs)

    def verdicts(self, encodings, **kwargs):
        self.calls.append(("steps", len(encodings)))
        self._wait()
        return self.rm.verdicts(encodings, **kwargs)

    def _wait(self) -> None:
        if not self.free.is_set():
            assert self.permits.acquire(timeout=60), "the test never let this call through"


def _train(tiny_bert: str, directory, objective: str):
    from tinyrm import ProcessRewardModel
    from tinyrm.train import TrainConfig, train

    data = directory / "steps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in STEP_ROWS))
    train(TrainConfig(model=tiny_bert, data=[str(data)], output=str(directory / objective), objective=objective,
                      batch_size=4, micro_batch_size=4, max_steps=1, max_length=128, save_steps=0))
    rm = ProcessRewardModel.from_pretrained(str(directory / objective), device="cpu", precision="fp32")
    return rm


@pytest.fixture(scope="module")
def prm(tiny_bert, tmp_path_factory):
    return _train(tiny_bert, tmp_path_factory.mktemp("prm"), "process")


@pytest.fixture
def stepped(prm):
    model = SteppedSteps(prm)
    yield model
    model.run_free()


def _post_in_thread(url: str, path: str, body: dict, answers: dict, key: str, **kw) -> threading.Thread:
    thread = threading.Thread(target=lambda: answers.update({key: httpx.post(f"{url}{path}", json=body, timeout=60,
                                                                              **kw)}))
    thread.start()
    return thread


def test_a_long_solution_is_sliced_and_a_pair_request_is_answered_between_its_calls(stepped, prm):
    app = create_app(stepped, ServeConfig(max_batch_size=4, slice_pairs=4, max_wait_ms=1))
    batcher, answers = app.state.batcher, {}
    with serving_app(app) as (url, _):
        steps = _post_in_thread(url, "/v1/score_steps", {"problem": PROBLEM, "steps": LONG}, answers, "steps")
        wait_for(lambda: stepped.calls == [("steps", 4)], "the step request never reached the model")
        pair = _post_in_thread(url, "/v1/compare", {"prompt": "2+2?", "a": "4", "b": "5"}, answers, "pair")
        wait_for(lambda: batcher.queued == 2, "the pair request was not queued")
        stepped.step()  # the step call in flight ends; the pair request is next in line
        wait_for(lambda: len(stepped.calls) == 2, "no second call")
        stepped.step()
        pair.join(timeout=60)
        assert stepped.calls[:2] == [("steps", 4), ("pairs", 1)]  # answered after 2 calls, not after all 12 steps
        assert answers["pair"].status_code == 200, answers["pair"].text
        assert batcher.outstanding_pairs == 8  # the solution's other two slices
        stepped.run_free()
        steps.join(timeout=60)
    assert stepped.calls == [("steps", 4), ("pairs", 1), ("steps", 4), ("steps", 4)]
    body = answers["steps"].json()
    assert answers["steps"].status_code == 200, body
    assert body["scores"] == pytest.approx(prm.score_steps(PROBLEM, LONG), abs=1e-5)
    assert body["reward"] == pytest.approx(min(body["scores"]), abs=1e-9)  # min: the default aggregate


def test_concurrent_step_requests_share_calls_and_get_their_own_scores(prm):
    app = create_app(prm, ServeConfig(max_batch_size=16, slice_pairs=5, max_wait_ms=300))
    solutions = {"long": (PROBLEM, LONG, "mean"), "bad": (PROBLEM, BAD, "product"), "one": ("1+1?", ["2"], "last")}
    answers: dict = {}
    with serving_app(app) as (url, _):
        threads = [_post_in_thread(url, "/v1/score_steps", {"problem": p, "steps": s, "aggregate": a}, answers, tag)
                   for tag, (p, s, a) in solutions.items()]
        for thread in threads:
            thread.join(timeout=120)
        stats = app.state.batcher.stats
    for tag, (problem, steps, aggregate) in solutions.items():
        assert answers[tag].status_code == 200, answers[tag].text
        body = answers[tag].json()
        assert body["scores"] == pytest.approx(prm.score_steps(problem, steps), abs=1e-5)
        assert body["reward"] == pytest.approx(prm.score_solution(problem, steps, aggregate=aggregate), abs=1e-5)
    assert stats.pairs == len(LONG) + len(BAD) + 1 and stats.max_batch_pairs <= 16  # one unit per step (prefix)
    assert stats.slices >= -(-len(LONG) // 5) + 2  # the long solution cut into slices of <= 5


def test_step_requests_meet_the_queue_bound_the_step_limit_and_the_deadline(stepped):
    app = create_app(stepped, ServeConfig(max_items=8, max_queued_pairs=8, max_batch_size=2, slice_pairs=2,
                                          max_wait_ms=1, request_timeout_s=60))
    batcher, answers = app.state.batcher, {}
    with serving_app(app) as (url, _):
        held = _post_in_thread(url, "/v1/score_steps", {"problem": PROBLEM, "steps": LONG[:8]}, answers, "held")
        wait_for(lambda: len(stepped.calls) == 1, "the first request never reached the model")
        r = httpx.post(f"{url}/v1/score_steps", json={"problem": PROBLEM, "steps": BAD}, timeout=60)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text  # 8 + 3 units > 8
        assert "overloaded" in r.json()["error"] and batcher.stats.shed == 1
        r = httpx.post(f"{url}/v1/score_steps", json={"problem": PROBLEM, "steps": LONG[:9]}, timeout=60)
        assert r.status_code == 422 and r.json()["field"] == "steps", r.text
        r = httpx.post(f"{url}/v1/score_steps", content=json.dumps({"problem": PROBLEM, "steps": ["1", "\ud800"]}),
                       headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 422 and r.json()["field"] == "steps.1", r.text  # a lone surrogate is no text
        stepped.run_free()
        held.join(timeout=60)
        assert answers["held"].status_code == 200
        stepped.hold()
        calls = len(stepped.calls)
        r = httpx.post(f"{url}/v1/score_steps", json={"problem": PROBLEM, "steps": LONG[:6]},
                       headers={"X-Request-Timeout": "0.5"}, timeout=60)  # its first call is held past it
        assert r.status_code == 503 and "timed out after 0.5 s" in r.json()["error"], r.text
        assert batcher.stats.timed_out == 1
        stepped.run_free()
        wait_for(lambda: not batcher.busy and batcher.outstanding_pairs == 0, "work left behind")
        assert len(stepped.calls) == calls + 1  # its other two slices were dropped, never scored
        # A deadline passing while the steps wait for the model thread (held by a pair call) to tokenise them.
        stepped.hold()
        pair = _post_in_thread(url, "/v1/compare", {"prompt": "2+2?", "a": "4", "b": "5"}, answers, "pair")
        wait_for(lambda: stepped.calls[-1] == ("pairs", 1), "the pair call never started")
        r = httpx.post(f"{url}/v1/score_steps", json={"problem": PROBLEM, "steps": BAD},
                       headers={"X-Request-Timeout": "0.5"}, timeout=60)
        assert r.status_code == 503 and "before its steps were tokenised" in r.json()["error"], r.text
        stepped.run_free()
        pair.join(timeout=60)
        assert answers["pair"].status_code == 200 and stepped.calls[-1] == ("pairs", 1)  # the steps never scored
    document = app.openapi()["components"]["schemas"]["ScoreStepsRequest"]["properties"]["steps"]
    assert document["maxItems"] == 8


def test_the_client_sends_a_text_as_the_local_model_splits_it_and_an_empty_one_as_one_empty_step(prm):
    from tinyrm.serving.client import RewardClient

    # Markers, a step over two lines, a calculator annotation and a #### line: cleaned on both sides alike.
    text = "Step 1: He starts with 3 apples.\nStep 2: He buys 4 more,\nso 3 + 4 = <<3+4=7>>7.\nStep 3: #### 7"
    with serving_app(create_app(prm, ServeConfig(max_wait_ms=1))) as (url, _), RewardClient(url) as client:
        body = client.score_steps(PROBLEM, text, aggregate="mean")  # it sent 94 one-character steps
        empty = client.score_steps(PROBLEM, " \n ")  # it sent no step: 422
    assert len(body["scores"]) == 3
    assert body["scores"] == pytest.approx(prm.score_steps(PROBLEM, text), abs=1e-5)
    assert body["reward"] == pytest.approx(prm.score_solution(PROBLEM, text, aggregate="mean"), abs=1e-5)
    # No step: the model's verdict on an empty step, as score_solution now gives (not 1.0); the server scored it.
    assert empty["reward"] == pytest.approx(prm.score_solution(PROBLEM, " \n "), abs=1e-5)
    assert empty["scores"] == pytest.approx([empty["reward"]], abs=1e-9) and empty["reward"] != 1.0


def test_an_outcome_model_is_served_its_own_verdict(tiny_bert, tmp_path):
    orm = _train(tiny_bert, tmp_path, "outcome")
    with serving_app(create_app(orm, ServeConfig(max_wait_ms=1))) as (url, _):
        r = httpx.post(f"{url}/v1/score_steps", json={"problem": PROBLEM, "steps": BAD}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scores"] == pytest.approx(orm.score_steps(PROBLEM, BAD), abs=1e-5)
    assert body["reward"] == pytest.approx(orm.score_solution(PROBLEM, BAD), abs=1e-5)  # the whole solution's
