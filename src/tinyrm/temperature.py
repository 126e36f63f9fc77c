"""Temperature scaling: the one transform every probability that leaves tinyrm goes through.

``tinyrm calibrate`` (:mod:`tinyrm.evaluation.calibrate`) fits one temperature T on a dev set and saves
it in ``tinyrm.json``::

    "calibration": {"method": "temperature", "temperature": 1.73, "n": 400, "data": ["dev.jsonl"], ...}

From then on a model's probability P becomes ``sigmoid(logit(P) / T)``: a pairwise model's P(a better)
where ``compare_batch`` returns it (both orders averaged), a process or outcome model's P(step correct)
where its verdicts are read (:func:`tinyrm.process.scoring.verdicts`), so ranking, rewards, ``--min-prob``
and aggregation all see calibrated values. T > 1 pulls probabilities towards 0.5, T < 1 pushes them
apart; the side of 0.5 never changes (kept exactly, even where rounding would move a P next to 0.5 onto
it), so no single probability's decision and no accuracy changes; what combines several (round-robin
Bradley-Terry strengths, the product / mean of step scores) can rank or decide differently. A folder
without a temperature, a temperature of exactly 1, ``calibrated=False`` on a call or ``model.calibrated
= False`` return the raw list itself, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METHOD = "temperature"
# Which probabilities a saved temperature scales: the kind's own. A process folder's temperature is
# for its step verdicts, not for the pairwise methods it inherits; a pairwise folder's temperature is
# not applied to zero-shot step verdicts.
PROCESS_OBJECTIVES = ("process", "outcome")
_ABOVE, _BELOW = math.nextafter(0.5, 1.0), math.nextafter(0.5, 0.0)


def check_temperature(value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"a temperature must be a finite number > 0, got {value!r}")
    return value


def calibration_block(temperature: float, n: int, data: Sequence[str], **extra) -> dict:
    """The ``calibration`` entry of ``tinyrm.json``."""
    return {"method": METHOD, "temperature": check_temperature(temperature), "n": int(n),
            "data": [str(d) for d in data], **extra}


def saved_temperature(config, kind: str = "pair") -> float | None:
    """The temperature ``config`` (a ``RewardConfig``) holds for its ``kind`` of probability (``pair`` or
    ``step``), or None: no calibration saved, or one for the other kind."""
    block = getattr(config, "calibration", None)
    if not block:
        return None
    if block.get("method", METHOD) != METHOD:
        raise ValueError(f"unknown calibration method {block.get('method')!r} (this tinyrm knows {METHOD!r})")
    is_process = getattr(config, "objective", "cloze") in PROCESS_OBJECTIVES
    if is_process != (kind == "step"):
        return None
    return check_temperature(block["temperature"])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(x >= 0, 1.0 / (1.0 + np.exp(-x)), np.exp(x) / (1.0 + np.exp(x)))


def scale(probs: Sequence[float], temperature: float | None) -> list[float]:
    """``sigmoid(logit(p) / T)`` for each p in [0, 1] (0 and 1 stay put, 0.5 stays 0.5, each p keeps its
    side of 0.5). ``temperature`` None or exactly 1: ``probs`` itself, untouched."""
    if temperature is None or temperature == 1.0:
        return probs
    t = check_temperature(temperature)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    with np.errstate(divide="ignore"):
        z = np.log(p) - np.log1p(-p)  # logit; -inf at 0, +inf at 1
    q = _sigmoid(z / t)
    q = np.where(p > 0.5, np.maximum(q, _ABOVE), np.where(p < 0.5, np.minimum(q, _BELOW), p))
    return [float(x) for x in q]


def wants_calibration(model, calibrated: bool | None) -> bool:
    """A call's ``calibrated=`` if given, else the model's switch (``model.calibrated``, default True)."""
    if calibrated is not None and not isinstance(calibrated, bool):  # "no" would read as True
        raise TypeError(f"calibrated must be True, False or None, got {calibrated!r}")
    return bool(getattr(model, "calibrated", True) if calibrated is None else calibrated)


def model_temperature(model, calibrated: bool | None = None, kind: str = "pair") -> float | None:
    """The temperature a call applies: None when switched off, when none is saved, or when it is exactly 1
    (which changes nothing)."""
    if not wants_calibration(model, calibrated):
        return None
    temperature = saved_temperature(getattr(model, "config", None), kind)
    return None if temperature == 1.0 else temperature


def calibrate_output(model, probs: Sequence[float], calibrated: bool | None = None, kind: str = "pair"):
    """What a model's scoring method returns: ``probs`` scaled by its saved temperature, or ``probs``
    itself (raw) when it has none or calibration is off."""
    return scale(probs, model_temperature(model, calibrated, kind))


def use_calibration(model, calibrated: bool = True):
    """``model.calibrated = calibrated`` (the ``--no-calibration`` switch of the CLI); returns the model."""
    model.calibrated = bool(calibrated)
    return model
