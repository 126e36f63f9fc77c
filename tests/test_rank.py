"""Ranking: the tournament logic on a stub with a known order, Bradley-Terry on hand examples,
then the real model and the ``tinyrm rank`` CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tinyrm.pairwise.rank import RankConfig, bradley_terry, copeland, knockout, rank, rank_candidates, round_robin


class KnownOrderScorer:
    """The only stub: P(a better) = sigmoid(q[a] - q[b]) from a fixed quality table; records calls and pairs."""

    def __init__(self, quality: dict[str, float], table: dict[tuple[str, str], float] | None = None) -> None:
        self.quality = quality
        self.table = table or {}
        self.calls: list[tuple[int, bool | None]] = []
        self.asked: list[tuple[str, str]] = []

    def compare_batch(self, items, batch_size=32, both_orders=None):
        items = list(items)
        self.calls.append((len(items), both_orders))
        out = []
        for _, a, b in items:
            self.asked.append((a, b))
            if (a, b) in self.table:
                out.append(self.table[(a, b)])
            elif (b, a) in self.table:
                out.append(1.0 - self.table[(b, a)])
            else:
                out.append(1.0 / (1.0 + math.exp(-(self.quality[a] - self.quality[b]))))
        return out


def shuffled_candidates(n: int, seed: int = 0) -> tuple[list[str], KnownOrderScorer, list[int]]:
    rng = np.random.default_rng(seed)
    quality = rng.permutation(n).astype(float)
    candidates = [f"answer {i}" for i in range(n)]
    scorer = KnownOrderScorer({c: q for c, q in zip(candidates, quality)})
    truth = sorted(range(n), key=lambda i: -quality[i])
    return candidates, scorer, truth


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 16])
def test_knockout_finds_the_best_with_n_minus_1_matches(n):
    candidates, scorer, truth = shuffled_candidates(n, seed=n)
    result = knockout(scorer, "q", candidates)
    assert result.ranking[0] == truth[0]
    assert sorted(result.ranking) == list(range(n))
    assert result.comparisons == n - 1
    assert result.sequences == 2 * (n - 1)
    assert result.calls == math.ceil(math.log2(n)) if n > 1 else result.calls == 0
    assert all(both is True for _, both in scorer.calls)  # both orders per match
    # Scores are consistent with the ranking (best first).
    ordered = [result.scores[i] for i in result.ranking]
    assert ordered == sorted(ordered, reverse=True)


def test_knockout_finalist_is_second_and_the_score_reflects_rounds():
    candidates, scorer, truth = shuffled_candidates(8, seed=3)
    result = knockout(scorer, "q", candidates)
    # With a consistent order, the runner-up is the best of the half without the champion.
    champion = truth[0]
    other_half = [i for i in range(8) if (i < 4) != (champion < 4)]
    assert result.ranking[1] == max(other_half, key=lambda i: scorer.quality[candidates[i]])
    assert 3 <= result.scores[champion] <= 4  # three rounds won, plus P(final)
    assert 2 <= result.scores[result.ranking[1]] < 3


@pytest.mark.parametrize("n", [2, 3, 6, 16])
def test_round_robin_recovers_the_full_order_in_one_batched_call(n):
    candidates, scorer, truth = shuffled_candidates(n, seed=10 + n)
    result = round_robin(scorer, "q", candidates, batch_size=7)
    assert result.ranking == truth
    assert result.comparisons == n * (n - 1) // 2
    assert result.sequences == n * (n - 1)
    assert scorer.calls == [(n * (n - 1) // 2, True)]
    # Without the prior, Bradley-Terry on sigmoid(q_a - q_b) judgements recovers the qualities up to a shift
    # (the default prior shrinks near-certain judgements, so only the order is exact there).
    exact = round_robin(scorer, "q", candidates, config=RankConfig(method="round_robin", bt_prior=0.0))
    q = np.array([scorer.quality[c] for c in candidates])
    np.testing.assert_allclose(np.array(exact.scores), q - q.mean(), atol=1e-4)


def test_round_robin_copeland_breaks_a_strength_tie():
    # A (index 1) and B (index 0) have equal soft win totals (1.2) -> equal BT strengths;
    # A beats both others, B beats one, so Copeland puts A first although B has the lower index.
    table = {("A", "B"): 0.6, ("A", "C"): 0.6, ("B", "C"): 0.8}
    scorer = KnownOrderScorer({}, table)
    result = round_robin(scorer, "q", ["B", "A", "C"])
    assert result.scores[0] == pytest.approx(result.scores[1], abs=1e-7)
    assert result.ranking == [1, 0, 2]


def test_bradley_terry_hand_examples():
    # Two players, A beat B 3 times out of 4: strength ratio 3, so theta_A - theta_B = log 3.
    theta = bradley_terry(np.array([[0.0, 3.0], [1.0, 0.0]]))
    assert theta[0] - theta[1] == pytest.approx(math.log(3), abs=1e-6)
    assert theta.sum() == pytest.approx(0.0, abs=1e-9)
    # Three games per pair, wins equal to their expectation under strengths (4, 2, 1): the MLE is exact.
    s = np.array([4.0, 2.0, 1.0])
    wins = 3 * s[:, None] / (s[:, None] + s[None, :])
    np.fill_diagonal(wins, 0.0)
    theta = bradley_terry(wins)
    np.testing.assert_allclose(theta, np.log(s) - np.log(s).mean(), atol=1e-6)


def test_bradley_terry_converges_on_confident_judgements():
    # Strengths tens of nats apart (a confident model's round robin): the fit must still solve the
    # likelihood equations, wins_i = sum_j games_ij * sigmoid(theta_i - theta_j), not stop short.
    true = np.random.default_rng(0).normal(0.0, 30.0, 64)
    prob = 1.0 / (1.0 + np.exp(-(true[:, None] - true[None, :])))
    np.fill_diagonal(prob, 0.0)
    prior = RankConfig().bt_prior
    theta = bradley_terry(prob, prior=prior)
    wins = prob + prior
    np.fill_diagonal(wins, 0.0)
    games = wins + wins.T
    expected = (games / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))).sum(axis=1)
    np.testing.assert_allclose(expected, wins.sum(axis=1), atol=1e-6)


def test_bradley_terry_prior_keeps_a_clean_sweep_finite():
    wins = np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    theta = bradley_terry(wins, prior=RankConfig().bt_prior)
    assert np.isfinite(theta).all()
    assert theta[0] > theta[1] > theta[2]
    with pytest.raises(ValueError, match="square"):
        bradley_terry(np.zeros((2, 3)))


def test_copeland_counts_wins_minus_losses():
    prob = np.array([[0.5, 0.9, 0.4], [0.1, 0.5, 0.5], [0.6, 0.5, 0.5]])
    assert copeland(prob).tolist() == [0, -1, 1]


def test_rank_rejects_bad_input():
    scorer = KnownOrderScorer({"a": 1.0})
    with pytest.raises(ValueError, match="empty"):
        rank(scorer, "q", [])
    with pytest.raises(ValueError, match="unknown ranking method"):
        rank(scorer, "q", ["a"], method="swiss")
    with pytest.raises(ValueError, match=r"candidates\[1\]"):
        rank(scorer, "q", ["a", 3])
    assert rank(scorer, "q", ["a"], method="round_robin") == [(0, 0.0)]


@pytest.fixture(scope="module")
def opinionated_rm(tmp_path_factory):
    from tinyrm import RewardModel

    from .integration_helpers import save_opinionated_bert

    # Wide-initialised (tiny_bert's P sit within 2e-5 of 0.5, where any order passes); fp32: the pairwise
    # probabilities below are recomputed in other batches than the ranking's.
    rm = RewardModel.from_pretrained(save_opinionated_bert(tmp_path_factory.mktemp("rank-bert")))
    rm.engine.config.precision = "fp32"
    return rm


@pytest.mark.parametrize("method", ["knockout", "round_robin"])
def test_reward_model_rank_and_best_of_n(opinionated_rm, method):
    rm, prompt = opinionated_rm, "What is the capital of France?"
    candidates = ["Paris is the capital.", "Lyon.", "I do not know.", "The capital of France is Paris.", "Berlin"]
    ranked = rm.rank(prompt, candidates, method=method, batch_size=4)
    assert sorted(i for i, _ in ranked) == list(range(len(candidates)))
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    assert rm.best_of_n(prompt, candidates, method=method) == ranked[0][0]
    # The ranking is a function of the model's own pairwise probabilities: every ordered pair judged directly
    # (no ranking code), then the tournament replayed on a stub that answers from those judgements.
    n = len(candidates)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    prob = dict(zip(pairs, rm.compare_batch([(prompt, candidates[i], candidates[j]) for i, j in pairs])))
    assert all(abs(p - 0.5) > 1e-3 and p + prob[j, i] == pytest.approx(1.0, abs=1e-5) for (i, j), p in prob.items())
    stub = KnownOrderScorer({}, {(candidates[i], candidates[j]): p for (i, j), p in prob.items()})
    if method == "round_robin":
        reference = round_robin(stub, prompt, candidates)
        # Every pair played once: Bradley-Terry orders the candidates as their soft win totals do.
        wins = sorted((sum(prob[i, j] for j in range(n) if j != i), i) for i in range(n))[::-1]
        assert all(w - v > 1e-3 for (w, _), (v, _) in zip(wins, wins[1:]))  # no near-tie
        assert [i for _, i in wins] == [i for i, _ in ranked]
    else:
        reference = knockout(stub, prompt, candidates)
        champion = candidates[ranked[0][0]]
        met = [b if a == champion else a for a, b in stub.asked if champion in (a, b)]
        assert met and all(prob[ranked[0][0], candidates.index(c)] > 0.5 for c in met)  # beat all it met
    assert ranked == [(i, pytest.approx(reference.scores[i], abs=1e-4)) for i in reference.ranking]


def test_rank_cli_writes_ranking_and_scores(tiny_bert, tmp_path, capsys):
    from tinyrm.cli import main

    rows = [{"id": "r1", "prompt": "2+2?", "candidates": ["4", "5", "four", "22"]},
            {"prompt": "Say hi", "candidates": ["hi"]}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    code = main(["rank", "--model", tiny_bert, "--input", str(src), "--output", str(out),
                 "--method", "round_robin", "--batch-size", "8"])
    assert code == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 2 and written[0]["id"] == "r1"
    assert sorted(written[0]["ranking"]) == [0, 1, 2, 3] and len(written[0]["scores"]) == 4
    assert written[1]["ranking"] == [0]


@pytest.mark.parametrize("line, reason", [
    ('{"prompt": "p", "candidates": []}', "'candidates' is empty"),
    ('{"candidates": ["a"]}', "missing field 'prompt'"),
    ('{"prompt": "p", "candidates": ["a", 1]}', "candidates[1] must be a string"),
    ('{"prompt": "p", "candidates": ', "bad JSON"),
])
def test_rank_cli_names_the_bad_line(tiny_bert, tmp_path, capsys, line, reason):
    from tinyrm.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "p", "candidates": ["a", "b"]}\n\n' + line + "\n")
    code = main(["rank", "--model", tiny_bert, "--input", str(src), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{src}:3: " in err and reason in err
    assert not (tmp_path / "o.jsonl").exists()  # validated before any output


def test_score_groups_names_the_group_and_candidate_it_refuses():
    from tinyrm.pairwise.groups import score_groups

    cases = [([("p", "abc")], r"groups\[0\]: candidates must be a list of strings, got str"),  # not 3 characters
             ([("p", ["a"]), (None, ["a"])], r"groups\[1\]: the prompt must be a string, got NoneType"),
             ([("p", ["a", None])], r"groups\[0\]: candidates\[1\] must be a string, got NoneType"),
             ([("p", [])], r"groups\[0\]: a group needs at least one candidate")]
    for groups, message in cases:
        with pytest.raises(ValueError, match=message):
            score_groups(None, groups)  # refused before any scoring
    with pytest.raises(ValueError, match="candidates must be a list of strings, got str"):
        rank_candidates(None, "p", "abc")  # rank's own check: not three one-character candidates
