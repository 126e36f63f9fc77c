"""Many candidate groups ranked at once, every candidate scored on one scale in [0, 1].

An RL trainer hands a reward function a batch of groups (each prompt with its sampled completions);
a rerank request is one group (the query with its documents). Both want one score per candidate, not
a tournament result, so each candidate gets its **win rate**: the Bradley-Terry probability that it
beats another member of its group, averaged over the other (distinct) members,
``mean_j sigmoid(theta_i - theta_j)``. It is 0.5 for a group of one or of identical candidates,
higher is better, it orders candidates exactly as their strengths do, and the scores of a group's
distinct candidates average 0.5 (a pairwise model knows only who is better *within* the group; a
repeated candidate repeats its score, so a group with repeats may average elsewhere).

- ``round_robin``: every pair of distinct candidates of every group, both orders, in **one**
  ``compare_batch`` call for all groups; strengths from ``rank.round_robin`` (the Bradley-Terry fit).
- ``knockout``: the brackets of all groups advance in lock-step, one ``compare_batch`` call per round
  (ceil(log2 n) calls whatever the number of groups); the n - 1 matches played form a tree, so the
  strengths that fit them exactly follow from the root: each match sets loser = winner - logit(P(win)).

Identical candidates within a group are judged once and share a score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .rank import METHODS, PairwiseScorer, check_candidates, round_robin

P_CLIP = 1e-6  # keeps logit(P(win)) finite on a clean sweep


@dataclass
class GroupScores:
    scores: list[list[float]]  # scores[g][k]: win rate of candidate k of group g, in [0, 1]
    strengths: list[list[float]]  # the Bradley-Terry log-strengths behind them
    comparisons: int  # distinct pairs judged (each in both orders: 2 sequences per comparison)
    calls: int  # compare_batch calls

    @property
    def sequences(self) -> int:
        return 2 * self.comparisons


def win_rates(theta: Sequence[float]) -> list[float]:
    """``mean_{j != i} sigmoid(theta_i - theta_j)`` per candidate; ``[0.5]`` for a single one."""
    t = np.asarray(theta, dtype=np.float64)
    n = len(t)
    if n == 1:
        return [0.5]
    p = 1.0 / (1.0 + np.exp(-(t[:, None] - t[None, :])))
    np.fill_diagonal(p, 0.0)
    return [float(x) for x in p.sum(axis=1) / (n - 1)]


class Answers:
    """A scorer that answers from probabilities already computed (lets ``rank.round_robin`` run unchanged)."""

    def __init__(self, probs: dict[tuple[str, str, str], float]) -> None:
        self.probs = probs

    def compare_batch(self, items, batch_size: int = 32, both_orders: bool | None = None) -> list[float]:
        return [self.probs[item] for item in items]


def _distinct(candidates: Sequence[str]) -> tuple[list[str], list[int]]:
    """The distinct candidates in first-seen order, and each candidate's position among them."""
    first: dict[str, int] = {}
    where = [first.setdefault(c, len(first)) for c in candidates]
    return list(first), where


def judge_all_pairs(scorer: PairwiseScorer, groups: Sequence[tuple[str, Sequence[str]]], batch_size: int
                    ) -> tuple[Answers, int]:
    """Every pair of candidates of every group, both orders, in one ``compare_batch`` call: a scorer that
    answers ``rank.round_robin``'s questions from those probabilities, and the number of distinct pairs."""
    items = list(dict.fromkeys((prompt, u[i], u[j]) for prompt, u in groups
                               for i in range(len(u)) for j in range(i + 1, len(u))))
    probs = scorer.compare_batch(items, batch_size=batch_size, both_orders=True) if items else []
    return Answers(dict(zip(items, (float(p) for p in probs)))), len(items)


def _round_robin(scorer: PairwiseScorer, groups: list[tuple[str, list[str]]], batch_size: int) -> GroupScores:
    answers, judged = judge_all_pairs(scorer, groups, batch_size)
    strengths = [round_robin(answers, prompt, u, batch_size=batch_size).scores for prompt, u in groups]
    return GroupScores([win_rates(t) for t in strengths], strengths, judged, 1 if judged else 0)


@dataclass
class Bracket:
    """The knockouts of several groups played in lock-step (``play_knockouts``)."""

    matches: list[list[tuple[int, int, int, float]]]  # per group: (round, winner, loser, P(win)) in play order
    byes: list[list[tuple[int, int]]]  # per group: (round, candidate) of each bye
    champions: list[int]
    comparisons: int
    calls: int


def play_knockouts(scorer: PairwiseScorer, groups: Sequence[tuple[str, Sequence[str]]], batch_size: int) -> Bracket:
    """The bracket of ``rank.knockout`` (0 v 1, 2 v 3, ..., a bye for the odd one out; an exact 0.5 goes
    to the lower index) for every group, all groups' matches of a round in one ``compare_batch`` call."""
    alive = [list(range(len(u))) for _, u in groups]
    bracket = Bracket([[] for _ in groups], [[] for _ in groups], [], 0, 0)
    round_no = 0
    while any(len(a) > 1 for a in alive):
        matches = [(g, a[k], a[k + 1]) for g, a in enumerate(alive) for k in range(0, len(a) - 1, 2)]
        probs = scorer.compare_batch([(groups[g][0], groups[g][1][i], groups[g][1][j]) for g, i, j in matches],
                                     batch_size=batch_size, both_orders=True)
        bracket.comparisons += len(matches)
        bracket.calls += 1
        survivors: list[list[int]] = [[] for _ in groups]
        for (g, i, j), p in zip(matches, probs):
            p = float(p)
            winner, loser, p_win = (i, j, p) if p >= 0.5 else (j, i, 1.0 - p)
            bracket.matches[g].append((round_no, winner, loser, p_win))
            survivors[g].append(winner)
        for g, a in enumerate(alive):
            if len(a) == 1:
                survivors[g] = a
            elif len(a) % 2:
                bracket.byes[g].append((round_no, a[-1]))
                survivors[g].append(a[-1])
        alive = survivors
        round_no += 1
    bracket.champions = [a[0] for a in alive]
    return bracket


def _knockout(scorer: PairwiseScorer, groups: list[tuple[str, list[str]]], batch_size: int) -> GroupScores:
    bracket = play_knockouts(scorer, groups, batch_size)
    strengths = []
    for (_, u), matches, champion in zip(groups, bracket.matches, bracket.champions):
        theta = [0.0] * len(u)
        # Latest match first: a loser's one eliminator played on after it, so its strength is set already.
        for _, winner, loser, p_win in reversed(matches):
            p_win = min(p_win, 1.0 - P_CLIP)
            theta[loser] = theta[winner] - math.log(p_win / (1.0 - p_win))
        assert theta[champion] == max(theta)
        strengths.append(theta)
    return GroupScores([win_rates(t) for t in strengths], strengths, bracket.comparisons, bracket.calls)


def score_groups(scorer: PairwiseScorer, groups: Sequence[tuple[str, Sequence[str]]], method: str = "round_robin",
                 batch_size: int = 32) -> GroupScores:
    """Win rates in [0, 1] for the candidates of every ``(prompt, candidates)`` group (see the module doc)."""
    if method not in METHODS:
        raise ValueError(f"unknown ranking method {method!r}; choose from {list(METHODS)}")
    distinct, where = [], []
    for g, (prompt, candidates) in enumerate(groups):
        if not isinstance(prompt, str):
            raise ValueError(f"groups[{g}]: the prompt must be a string, got {type(prompt).__name__}")
        if isinstance(candidates, str) or not isinstance(candidates, Sequence):  # a str would be its characters
            raise ValueError(f"groups[{g}]: candidates must be a list of strings, got {type(candidates).__name__}")
        if not candidates:
            raise ValueError(f"groups[{g}]: a group needs at least one candidate")
        try:
            check_candidates(candidates)  # rank's check of each candidate
        except ValueError as error:
            raise ValueError(f"groups[{g}]: {error}") from None
        u, w = _distinct(candidates)
        distinct.append((prompt, u))
        where.append(w)
    run = _round_robin if method == "round_robin" else _knockout
    result = run(scorer, distinct, batch_size)
    result.scores = [[s[k] for k in w] for s, w in zip(result.scores, where)]
    result.strengths = [[t[k] for k in w] for t, w in zip(result.strengths, where)]
    return result
