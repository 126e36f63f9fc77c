"""Calibration of probabilities: does P = 0.7 come true 70% of the time? And the temperature that makes it so.

The ``calibration`` entry of a results JSON (overall, per subset and per domain for pairs; for step and
solution verdicts in process evaluations)::

    {"ece": 0.041, "brier": 0.178, "log_loss": 0.532,
     "bins": [{"count": 12, "mean_predicted": 0.061, "observed": 0.083}, ... 10 bins]}

Points are (predicted probability, outcome) pairs. A preference pair's label is always "chosen is
better", so each pair counts twice, as (P, 1) and (1 - P, 0), P = P(chosen better): the bins then cover
[0, 1] and the diagram is symmetric about 0.5. A step or solution verdict counts once, as (P(correct),
1 if it is correct else 0).

- ``bins``: 10 equal-width bins, bin k holding the points with k/10 <= predicted < (k+1)/10 (the last
  one closed, so 1.0 is in bin 9); ``count`` points, the mean predicted probability and the observed
  frequency of outcome 1 (both null for an empty bin).
- ``ece`` (expected calibration error): sum over bins of (count / all points) x |mean_predicted - observed|.
- ``brier``: the mean of (1 - P(what happened))^2; for pairs, mean (1 - P)^2 over pairs.
- ``log_loss``: the mean of -ln P(what happened), P clipped to [1e-7, 1 - 1e-7]; for pairs, mean -ln P.
  Answering 0.5 every time scores ln 2 = 0.693.

All three are null with no point. :func:`fit_temperature` gives the T that minimises the log loss of
``sigmoid(logit(P) / T)`` (``tinyrm calibrate``, :mod:`tinyrm.evaluation.calibrate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..temperature import scale

N_BINS = 10
EPS = 1e-7  # log loss clipping
# Bounds of the temperature search (1 / 100 to 100) and the grid that seeds it (points per factor e).
T_MIN, T_MAX = 0.01, 100.0
_GRID = 10


def _mean_log_loss(p_true: np.ndarray) -> float:
    """Mean -ln P(what happened), P clipped to [1e-7, 1 - 1e-7]."""
    return float(np.mean(-np.log(np.clip(p_true, EPS, 1.0 - EPS))))


def _block(predicted: np.ndarray, outcomes: np.ndarray, p_true: np.ndarray) -> dict:
    """The entry from each point's predicted probability, outcome (0 / 1) and the probability it gave to
    what happened (brier and log loss read ``p_true``; the bins read ``predicted`` and ``outcomes``)."""
    edges = np.arange(1, N_BINS) / N_BINS  # 0.1 ... 0.9: bin k is [k/10, (k+1)/10), the last [0.9, 1]
    # Rounded for the bin only: 1 - 0.8 is 0.19999999999999996, which would put a pair's mirrored point
    # one bin below its own (pair_calibration).
    index = np.searchsorted(edges, np.round(predicted, 12), side="right")
    bins, ece = [], 0.0
    total = len(predicted)
    for k in range(N_BINS):
        chosen = index == k
        count = int(chosen.sum())
        if count:
            mean_predicted = float(predicted[chosen].mean())
            observed = float(outcomes[chosen].mean())
            ece += count / total * abs(mean_predicted - observed)
        else:
            mean_predicted = observed = None
        bins.append({"count": count, "mean_predicted": mean_predicted, "observed": observed})
    if not total:
        return {"ece": None, "brier": None, "log_loss": None, "bins": bins}
    return {"ece": float(ece), "brier": float(np.mean((1.0 - p_true) ** 2)),
            "log_loss": _mean_log_loss(p_true), "bins": bins}


def calibration(probs: Sequence[float], outcomes: Sequence[bool | int]) -> dict:
    """The ``calibration`` entry of verdicts: ``probs[i]`` = P(outcome i is 1), each counted once."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    o = np.asarray(outcomes, dtype=np.float64).reshape(-1)
    if p.shape != o.shape:
        raise ValueError(f"{len(p)} probabilities but {len(o)} outcomes")
    return _block(p, o, np.where(o > 0, p, 1.0 - p))


def pair_calibration(probs_chosen: Sequence[float]) -> dict:
    """The ``calibration`` entry of preference pairs scored P(chosen better) each: every pair counted
    as (P, 1) and (1 - P, 0)."""
    p = np.asarray(probs_chosen, dtype=np.float64).reshape(-1)
    predicted = np.concatenate([p, 1.0 - p])
    outcomes = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    return _block(predicted, outcomes, np.concatenate([p, p]))


def log_loss(probs: Sequence[float], outcomes: Sequence[bool | int] | None = None) -> float:
    """Mean -ln P(what happened), P clipped to [1e-7, 1 - 1e-7]; ``outcomes`` None: every outcome is 1
    (pairs scored P(chosen better))."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if outcomes is not None:
        p = np.where(np.asarray(outcomes, dtype=np.float64).reshape(-1) > 0, p, 1.0 - p)
    if not len(p):
        raise ValueError("no probability to score")
    return _mean_log_loss(p)


def fit_temperature(probs: Sequence[float], outcomes: Sequence[bool | int] | None = None) -> tuple[float, float, float]:
    """The temperature T in [0.01, 100] minimising :func:`log_loss` of ``sigmoid(logit(P) / T)``, with the
    log loss before (T = 1) and after: ``(T, before, after)``.

    A bounded one-dimensional search on log T: a grid of 10 points per factor e over [ln 0.01, ln 100],
    then Brent's bounded method (``scipy.optimize.minimize_scalar``) between the best grid point's
    neighbours. The loss is computed with the very transform the models apply (``tinyrm.temperature.scale``),
    and T = 1 is kept unless another T scores strictly lower, so the log loss on these probabilities never
    rises. ``outcomes`` None: pairs (every outcome 1, P = P(chosen better)); else P(outcome i is 1).
    """
    from scipy.optimize import minimize_scalar

    p = [float(x) for x in probs]
    if not p:
        raise ValueError("no probability to fit a temperature on")

    def loss(log_t: float) -> float:
        return log_loss(scale(p, math.exp(log_t)), outcomes)

    before = log_loss(p, outcomes)
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    grid = np.linspace(lo, hi, int(round((hi - lo) * _GRID)) + 1)
    values = [loss(x) for x in grid]
    best = int(np.argmin(values))
    left, right = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    found = minimize_scalar(loss, bounds=(left, right), method="bounded", options={"xatol": 1e-6})
    candidates = [(before, 1.0), (values[best], math.exp(grid[best]))]
    if found.success:
        candidates.append((float(found.fun), math.exp(float(found.x))))
    after, temperature = min(candidates, key=lambda c: (c[0], c[1] != 1.0))
    return temperature, before, after


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# Column titles shared by the CLI tables and the model card.
COLUMNS = ("ECE", "Brier", "log loss")


def table_cells(entry: dict | None) -> list[str]:
    """The three cells under :data:`COLUMNS` for one row's ``calibration`` entry (``-`` where there is none)."""
    entry = entry or {}
    return [_fmt(entry.get("ece")), _fmt(entry.get("brier")), _fmt(entry.get("log_loss"))]
