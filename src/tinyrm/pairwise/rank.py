"""Best-of-n ranking from pairwise judgements.

A pairwise reward model only says which of two answers is better, so ranking n answers needs a
tournament on top of it:

- ``knockout``: single elimination, n - 1 matches (each judged in both orders), one batched
  ``compare_batch`` call per round. Cheap, good for large n, but only the winner is certain.
- ``round_robin``: every pair (both orders) in batched passes, then a Bradley-Terry fit by
  Zermelo / MM iterations (Newton's method finishes where MM stalls); scores are log-strengths,
  ties broken by Copeland score.

Everything here takes any *scorer*: an object with ``compare_batch(items, batch_size=..., both_orders=...)``
returning P(a better than b) per ``(prompt, a, b)`` - a ``RewardModel``, a ``RewardClient`` or a
server-side batcher.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

METHODS = ("knockout", "round_robin")


class PairwiseScorer(Protocol):
    def compare_batch(self, items, batch_size: int = ..., both_orders: bool | None = ...) -> list[float]: ...


@dataclass
class RankConfig:
    method: str = "knockout"  # knockout | round_robin
    batch_size: int = 32  # sequences per forward pass, passed to compare_batch
    bt_iterations: int = 1000  # Bradley-Terry MM iteration cap (then Newton, if not converged)
    bt_tolerance: float = 1e-9  # stop when no log-strength moves more than this
    bt_prior: float = 0.01  # pseudo-wins per side of each pair: keeps strengths finite on clean sweeps


@dataclass
class RankResult:
    """Ranking best first, with per-candidate scores and the cost of getting them."""

    ranking: list[int]  # candidate indices, best first
    scores: list[float]  # scores[i] belongs to candidates[i]
    comparisons: int  # pairs judged (each in both orders)
    sequences: int  # cloze sequences through the encoder (2 per comparison)
    calls: int  # compare_batch calls (batched passes)

    def pairs(self) -> list[tuple[int, float]]:
        """``[(index, score), ...]`` best first: the ``RewardModel.rank`` return value."""
        return [(i, self.scores[i]) for i in self.ranking]


def check_candidates(candidates: Sequence[str]) -> list[str]:
    if isinstance(candidates, str):  # list() would make each character a candidate
        raise ValueError("candidates must be a list of strings, got str")
    candidates = list(candidates)
    if not candidates:
        raise ValueError("candidates must not be empty")
    for i, c in enumerate(candidates):
        if not isinstance(c, str):
            raise ValueError(f"candidates[{i}] must be a string, got {type(c).__name__}")
    return candidates


def knockout(scorer: PairwiseScorer, prompt: str, candidates: Sequence[str], batch_size: int = 32) -> RankResult:
    """Single elimination in bracket order (0 v 1, 2 v 3, ...); an odd one out gets a bye.

    Score = rounds survived + P(winning the last match played), so the champion scores highest,
    the finalist next, and players knocked out in the same round are ordered by how close they came.
    An exact 0.5 goes to the lower index, so results are deterministic.
    """
    candidates = check_candidates(candidates)
    alive = list(range(len(candidates)))
    scores = [0.0] * len(candidates)
    comparisons = calls = 0
    round_no = 0
    while len(alive) > 1:
        matches = [(alive[k], alive[k + 1]) for k in range(0, len(alive) - 1, 2)]
        probs = scorer.compare_batch(
            [(prompt, candidates[i], candidates[j]) for i, j in matches], batch_size=batch_size, both_orders=True
        )
        comparisons += len(matches)
        calls += 1
        survivors = []
        for (i, j), p in zip(matches, probs):
            winner, loser, p_win = (i, j, p) if p >= 0.5 else (j, i, 1.0 - p)
            scores[loser] = round_no + (1.0 - p_win)
            scores[winner] = round_no + 1 + p_win  # overwritten if it loses later
            survivors.append(winner)
        if len(alive) % 2:
            bye = alive[-1]
            scores[bye] = max(scores[bye], round_no + 1.0)
            survivors.append(bye)
        alive = survivors
        round_no += 1
    ranking = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
    return RankResult(ranking, scores, comparisons, 2 * comparisons, calls)


def bradley_terry(
    wins: np.ndarray, iterations: int = 1000, tolerance: float = 1e-9, prior: float = 0.0
) -> np.ndarray:
    """Bradley-Terry log-strengths from a (soft) win matrix by Zermelo's MM iterations (Hunter 2004).

    ``wins[i, j]`` = (possibly fractional) number of times i beat j. Returns theta with mean 0 and
    P(i beats j) = sigmoid(theta_i - theta_j). ``prior`` adds that many wins to both sides of every
    pair, which keeps the estimate finite when a candidate wins or loses everything.
    """
    w = np.asarray(wins, dtype=np.float64).copy()
    n = w.shape[0]
    if w.shape != (n, n):
        raise ValueError(f"wins must be square, got shape {w.shape}")
    if (w < 0).any():
        raise ValueError("wins must be non-negative")
    np.fill_diagonal(w, 0.0)
    if prior > 0:
        w += prior
        np.fill_diagonal(w, 0.0)
    games = w + w.T  # n_ij
    total_wins = w.sum(axis=1)
    strength = np.ones(n)
    done = False
    for _ in range(iterations):
        denom = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        new = np.where(denom > 0, total_wins / np.where(denom > 0, denom, 1.0), strength)
        new = np.maximum(new, 1e-300)  # a candidate with no wins tends to 0; keep logs finite
        new /= math.exp(np.log(new).mean())
        done = np.abs(np.log(new) - np.log(strength)).max() < tolerance
        strength = new
        if done:
            break
    theta = np.log(strength)
    if not done and (games + np.eye(n) > 0).all():
        # MM slows to a crawl on confident judgements (strengths tens of nats apart); with every pair
        # played the likelihood is strictly concave on mean-zero theta, so Newton finishes the job.
        theta = _newton(theta, w, games, tolerance)
    return theta - theta.mean()


def _newton(theta: np.ndarray, wins: np.ndarray, games: np.ndarray, tolerance: float, steps: int = 100) -> np.ndarray:
    """Newton's method with backtracking on the Bradley-Terry log-likelihood, from ``theta``."""

    def loglik(t: np.ndarray) -> float:
        diff = t[:, None] - t[None, :]
        return float((wins * -np.logaddexp(0.0, -diff)).sum())

    n = len(theta)
    current = loglik(theta)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))
        grad = wins.sum(axis=1) - (games * p).sum(axis=1)
        curvature = games * p * p.T
        hessian = np.diag(curvature.sum(axis=1)) - curvature + 1.0 / n  # + 11^T/n pins the mean
        step = np.linalg.solve(hessian, grad)
        scale = 1.0
        while scale > 1e-8:
            trial = theta + scale * step
            value = loglik(trial)
            if value >= current - 1e-12 * abs(current):
                break
            scale /= 2
        else:
            break
        theta, current = trial, value
        if np.abs(scale * step).max() < tolerance:
            break
    return theta


def copeland(prob: np.ndarray) -> np.ndarray:
    """Copeland score per candidate: pairwise wins minus losses (p > 0.5 is a win, 0.5 a draw)."""
    off = ~np.eye(prob.shape[0], dtype=bool)
    return ((prob > 0.5) & off).sum(axis=1) - ((prob < 0.5) & off).sum(axis=1)


def round_robin(
    scorer: PairwiseScorer, prompt: str, candidates: Sequence[str], batch_size: int = 32,
    config: RankConfig | None = None,
) -> RankResult:
    """All n(n-1)/2 pairs, each in both orders, in one batched call; Bradley-Terry scores."""
    config = config or RankConfig(method="round_robin", batch_size=batch_size)
    candidates = check_candidates(candidates)
    n = len(candidates)
    if n == 1:
        return RankResult([0], [0.0], 0, 0, 0)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    probs = scorer.compare_batch(
        [(prompt, candidates[i], candidates[j]) for i, j in pairs], batch_size=batch_size, both_orders=True
    )
    # prob[i, j] = P(i better than j), already averaged over both presentation orders.
    prob = np.full((n, n), 0.5)
    for (i, j), p in zip(pairs, probs):
        prob[i, j], prob[j, i] = p, 1.0 - p
    np.fill_diagonal(prob, 0.0)
    theta = bradley_terry(prob, config.bt_iterations, config.bt_tolerance, config.bt_prior)
    np.fill_diagonal(prob, 0.5)
    cope = copeland(prob)
    # Strengths equal to numerical precision count as tied; Copeland, then index, decide.
    ranking = sorted(range(n), key=lambda i: (-round(float(theta[i]), 6), -int(cope[i]), i))
    return RankResult(ranking, [float(t) for t in theta], len(pairs), 2 * len(pairs), 1)


def rank_candidates(
    scorer: PairwiseScorer, prompt: str, candidates: Sequence[str], method: str = "knockout", batch_size: int = 32
) -> RankResult:
    """Dispatch on ``method``; see ``knockout`` and ``round_robin``. A scorer with a scalar reward per response
    (``score_batch``: the baselines) is ranked by it, whatever the method: no tournament is needed."""
    if method not in METHODS:
        raise ValueError(f"unknown ranking method {method!r}; choose from {list(METHODS)}")
    if hasattr(scorer, "score_batch"):
        candidates = check_candidates(candidates)
        scores = scorer.score_batch([(prompt, c) for c in candidates], batch_size=batch_size)
        ranking = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
        return RankResult(ranking, scores, comparisons=0, sequences=len(candidates), calls=1)
    if method == "knockout":
        return knockout(scorer, prompt, candidates, batch_size=batch_size)
    if method == "round_robin":
        return round_robin(scorer, prompt, candidates, batch_size=batch_size)
    raise ValueError(f"unknown ranking method {method!r}; choose from {list(METHODS)}")


def rank(
    scorer: PairwiseScorer, prompt: str, candidates: Sequence[str], method: str = "knockout", batch_size: int = 32
) -> list[tuple[int, float]]:
    """``[(index, score), ...]`` best first."""
    return rank_candidates(scorer, prompt, candidates, method=method, batch_size=batch_size).pairs()


def best_of_n(
    scorer: PairwiseScorer, prompt: str, candidates: Sequence[str], method: str = "knockout", batch_size: int = 32
) -> int:
    """Index of the best candidate."""
    return rank_candidates(scorer, prompt, candidates, method=method, batch_size=batch_size).ranking[0]
