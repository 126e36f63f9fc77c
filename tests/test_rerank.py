"""POST /v1/rerank and /v2/rerank: order, scores, limits, auth and bad input, with httpx and the real Cohere SDK."""

from __future__ import annotations

import httpx
import pytest

from tinyrm.pairwise.groups import win_rates
from tinyrm.pairwise.rank import round_robin
from tinyrm.serving.app import ServeConfig

from .integration_helpers import save_opinionated_bert
from .test_serve import running_server

KEY = "rerank-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital of France.", "Berlin.", "France is a country in Europe, its capital is Paris.",
        "I like trains.", "Lyon is a large French city."]


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    from tinyrm import load

    rm = load(save_opinionated_bert(tmp_path_factory.mktemp("rerank-bert")))
    rm.engine.config.precision = "fp32"  # server answers are compared with direct calls
    return rm


@pytest.fixture(scope="module")
def server(rm):
    config = ServeConfig(api_key=KEY, max_wait_ms=1, max_documents=6, max_request_bytes=20_000)
    with running_server(rm, config) as url:
        yield url


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server, timeout=60, headers=AUTH) as client:
        yield client


def expected_scores(rm, documents=DOCS) -> list[float]:
    """Win rates from the library's round robin of the model, not from ``score_groups``, which the server runs."""
    return win_rates(round_robin(rm, QUERY, list(documents)).scores)


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_rerank_orders_documents_best_first_with_win_rates(http, rm, path):
    documents = [DOCS[0], {"text": DOCS[1]}, *DOCS[2:]]  # plain strings and {"text"} objects mix
    r = http.post(path, json={"model": "rerank-v3.5", "query": QUERY, "documents": documents})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == rm.name and set(body) == {"model", "results"}
    results = body["results"]
    assert sorted(x["index"] for x in results) == list(range(5))
    scores = [x["relevance_score"] for x in results]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
    assert all("document" not in x for x in results)  # return_documents defaults to false (Cohere)
    expected = expected_scores(rm)
    assert [expected[x["index"]] for x in results] == pytest.approx(scores, abs=1e-5)
    assert sum(scores) / 5 == pytest.approx(0.5, abs=1e-6)  # win rates average 0.5
    assert len({round(s, 3) for s in scores}) == 5  # an opinionated model: distinct scores
    top, bottom = results[0]["index"], results[-1]["index"]
    assert rm.compare(QUERY, DOCS[top], DOCS[bottom]) > 0.5 + 1e-3  # the model itself prefers the first to the last

    r = http.post(path, json={"query": QUERY, "documents": DOCS, "top_n": 2, "return_documents": True,
                              "max_chunks_per_doc": None, "max_tokens_per_doc": 512})  # others' knobs: ignored
    top = r.json()["results"]
    assert [x["index"] for x in top] == [x["index"] for x in results[:2]]
    assert [x["document"] for x in top] == [{"text": DOCS[x["index"]]} for x in top]
    assert len(http.post(path, json={"query": QUERY, "documents": DOCS, "top_n": 50}).json()["results"]) == 5


def test_duplicates_and_a_single_document(http, rm):
    r = http.post("/v1/rerank", json={"query": QUERY, "documents": ["Paris.", "Berlin.", "Paris."]}).json()
    by_index = {x["index"]: x["relevance_score"] for x in r["results"]}
    assert by_index[0] == by_index[2]
    paris, berlin = expected_scores(rm, ["Paris.", "Berlin."])  # the repeat is judged once: two distinct documents
    assert abs(paris - 0.5) > 1e-4 and (paris > 0.5) == (rm.compare(QUERY, "Paris.", "Berlin.") > 0.5)
    assert [by_index[0], by_index[1]] == pytest.approx([paris, berlin], abs=1e-5)
    assert http.post("/v1/rerank", json={"query": QUERY, "documents": ["Paris."]}).json()["results"] == \
        [{"index": 0, "relevance_score": 0.5}]


def test_cohere_sdk_v1_and_v2_clients(server, rm):
    cohere = pytest.importorskip("cohere")
    expected = expected_scores(rm)
    best_first = sorted(range(5), key=lambda i: -expected[i])

    v1 = cohere.Client(api_key=KEY, base_url=server, timeout=60)
    response = v1.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=3, return_documents=True)
    assert [x.index for x in response.results] == best_first[:3]
    assert [x.relevance_score for x in response.results] == pytest.approx([expected[i] for i in best_first[:3]],
                                                                           abs=1e-5)
    assert [x.document.text for x in response.results] == [DOCS[i] for i in best_first[:3]]

    v2 = cohere.ClientV2(api_key=KEY, base_url=server, timeout=60)
    response = v2.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS)
    assert [x.index for x in response.results] == best_first
    assert [x.relevance_score for x in response.results] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)


def test_cohere_sdk_sees_auth_and_limit_errors(server):
    cohere = pytest.importorskip("cohere")
    from cohere.core.api_error import ApiError

    wrong = cohere.ClientV2(api_key="wrong", base_url=server, timeout=60)
    with pytest.raises(ApiError) as error:
        wrong.rerank(model="m", query=QUERY, documents=DOCS)
    assert error.value.status_code == 401 and "wrong API key" in error.value.body["error"]
    client = cohere.Client(api_key=KEY, base_url=server, timeout=60, max_retries=0)
    with pytest.raises(ApiError) as error:
        client.rerank(model="m", query=QUERY, documents=DOCS * 2)
    assert error.value.status_code == 422 and error.value.body["field"] == "documents"


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_rerank_needs_the_key(server, path):
    with httpx.Client(base_url=server, timeout=60) as bare:
        r = bare.post(path, json={"query": QUERY, "documents": DOCS})
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json() == {"error": "missing API key: send 'Authorization: Bearer KEY'"}
        assert bare.get("/health").json()["limits"]["max_documents"] == 6


@pytest.mark.parametrize("body,field", [
    ({"documents": DOCS}, "query"),
    ({"query": QUERY}, "documents"),
    ({"query": QUERY, "documents": []}, "documents"),
    ({"query": QUERY, "documents": DOCS * 2}, "documents"),  # over max_documents (6)
    ({"query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
    ({"query": QUERY, "documents": ["fine", 5]}, "documents.1"),
    ({"query": QUERY, "documents": [{"title": "no text"}]}, "documents.0"),
    ({"query": QUERY, "documents": [{"text": "x", "title": "t"}]}, "documents.0"),
    ({"query": QUERY, "documents": DOCS, "return_documents": "maybe"}, "return_documents"),
])
def test_bad_rerank_requests_get_422_with_the_field(http, body, field):
    r = http.post("/v1/rerank", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and field in r.json()["error"]


def test_rerank_body_over_the_limit_gets_413(http):
    r = http.post("/v2/rerank", json={"query": QUERY, "documents": ["x" * 25_000]})
    assert r.status_code == 413 and r.json() == {"error": "request body over the 20000-byte limit"}


def test_rank_of_a_served_baseline_sorts_by_its_rewards(spread_bert, tmp_path):
    """/v1/rank on a reward-per-response model ranks by the rewards, as rm.rank does: n responses go through the
    batcher (``kind="rewards"``), not a tournament's n(n - 1) / 2 pairs."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tinyrm import load
    from tinyrm.pairwise.baselines.model import BaselineRewardModel

    torch.manual_seed(0)
    folder = tmp_path / "classifier"
    AutoModelForSequenceClassification.from_pretrained(spread_bert, num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(spread_bert).save_pretrained(folder)
    rm = load(str(folder))
    assert isinstance(rm, BaselineRewardModel)
    rewards = rm.score_batch([(QUERY, d) for d in DOCS])
    assert max(rewards) - min(rewards) > 1e-2  # spread: the order below means something
    with running_server(rm, ServeConfig(max_wait_ms=1)) as url, httpx.Client(base_url=url, timeout=60) as http:
        for method in ("knockout", "round_robin"):
            got = http.post("/v1/rank", json={"prompt": QUERY, "candidates": DOCS, "method": method})
            assert got.status_code == 200, got.text
            assert got.json()["ranking"] == [i for i, _ in rm.rank(QUERY, DOCS)]
            assert got.json()["scores"] == pytest.approx(rewards, abs=1e-5)
        assert http.get("/health").json()["batching"]["pairs"] == 2 * len(DOCS)
