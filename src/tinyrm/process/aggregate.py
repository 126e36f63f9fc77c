"""One function that turns per-step scores into a solution-level reward.

``aggregate(scores, method, threshold=0.5)``, with ``scores`` the P(step correct) of each step:

- ``min``: the weakest step (empty: 1.0; one step s: s)
- ``product``: P(all steps correct) if step verdicts were independent (empty: 1.0; one step: s)
- ``mean``: the average step score (empty: 1.0; one step: s)
- ``last``: the score of the final step (empty: 1.0; one step: s)
- ``geometric_mean``: ``product ** (1 / n)``, the product without its length penalty (empty: 1.0; one step: s)
- ``first_error``: the 0-based index of the first step scoring below ``threshold``, ``len(scores)``
  when no step does (empty: 0; one step: 0 if s < threshold else 1)

An empty solution has no wrong step, so every score aggregator returns 1.0 (the identity of
``min`` and ``product``; the others follow the same convention so that methods agree). That is this
function's rule only: ``ProcessRewardModel.score_solution`` and ``rerank`` judge a solution with no step as one
empty step read by the model (``tinyrm.process.scoring``), so an empty answer cannot score 1.0.
``first_error`` returns a step count as a float: the number of leading steps judged correct,
so "higher is better" holds for every method and a solution with no flagged step scores
``len(scores)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

METHODS = ("min", "product", "mean", "last", "geometric_mean", "first_error")


def check_method(method: str) -> str:
    """``method`` if it is one of ``METHODS``; else a ``ValueError`` listing them (callers check before scoring)."""
    if method not in METHODS:
        raise ValueError(f"unknown aggregation {method!r}; choose from {', '.join(METHODS)}")
    return method


def check_threshold(threshold: float) -> float:
    """``threshold`` (a P(step correct) cut, ``first_error``'s) if it is a number in [0, 1]; else a ``ValueError``
    naming it (NaN would flag no step and 2 every step, without a word)."""
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
    return float(threshold)


def aggregate(scores: Sequence[float], method: str = "min", threshold: float = 0.5) -> float:
    """Solution-level score from step scores in [0, 1] (see the module docstring for each method); ``threshold``
    must be in [0, 1] (``check_threshold``), whatever the method."""
    check_method(method)
    check_threshold(threshold)
    values = [float(s) for s in scores]
    for i, value in enumerate(values):
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise ValueError(f"step score {i} is {value}: scores must be probabilities in [0, 1]")
    if method == "first_error":
        return float(next((i for i, value in enumerate(values) if value < threshold), len(values)))
    if not values:
        return 1.0
    if method == "min":
        return min(values)
    if method == "product":
        return math.prod(values)
    if method == "mean":
        return sum(values) / len(values)
    if method == "last":
        return values[-1]
    # geometric_mean, in log space so long solutions do not underflow
    if min(values) == 0.0:
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


def rank_key(scores: Sequence[float], method: str = "min", threshold: float = 0.5) -> float:
    """What to sort solutions by under ``method``: its aggregate, except ``product``'s logarithm (the product
    underflows to 0.0 on long or sharply calibrated solutions, which would tie solutions that differ)."""
    value = aggregate(scores, method, threshold)  # checks the method and the scores
    if method != "product":
        return value
    return sum(math.log(s) if s > 0.0 else -math.inf for s in map(float, scores))
