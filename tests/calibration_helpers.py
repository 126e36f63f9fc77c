"""Shared by the calibration tests (``test_calibration.py``, ``test_calibrated_probabilities.py``): the
references written from the issue's definitions with ``math`` and plain loops, apart from tinyrm's own code,
and saved models with a temperature (the fixtures, ``calibration_data``, ``cloze_dir`` and ``cal_dir``, are in
``conftest.py``)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tinyrm import RewardModel, load
from tinyrm.config import RewardConfig

SMALL_T = 1e-3
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "calibration.py"


def run_benchmark(argv: list[str]) -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location("calibration_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


# ------------------------------------------------------------------ the reference, from the text
def sigmoid_logit(p: float, t: float) -> float:
    """sigmoid(logit(p) / t) with math, written apart from tinyrm.temperature."""
    if p in (0.0, 1.0):
        return p
    z = math.log(p / (1.0 - p)) / t
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def reference_block(points: list[tuple[float, int]], p_true: list[float]) -> dict:
    """10 equal-width bins over [0, 1] (the last closed), ECE, Brier, log loss (P clipped to [1e-7, 1 - 1e-7])."""
    bins: list[list[tuple[float, int]]] = [[] for _ in range(10)]
    for q, o in points:
        r = round(q, 12)  # the bin of the exact value: 1 - 0.9 is 0.1, not 0.09999999999999998
        k = 9 if r >= 0.9 else next(k for k in range(10) if k / 10 <= r < (k + 1) / 10)
        bins[k].append((q, o))
    out_bins, ece = [], 0.0
    for members in bins:
        if members:
            mean_q = sum(q for q, _ in members) / len(members)
            observed = sum(o for _, o in members) / len(members)
            ece += len(members) / len(points) * abs(mean_q - observed)
            out_bins.append({"count": len(members), "mean_predicted": mean_q, "observed": observed})
        else:
            out_bins.append({"count": 0, "mean_predicted": None, "observed": None})
    clip = [min(max(p, 1e-7), 1 - 1e-7) for p in p_true]
    return {"ece": ece, "brier": sum((1 - p) ** 2 for p in p_true) / len(p_true),
            "log_loss": sum(-math.log(p) for p in clip) / len(clip), "bins": out_bins}


def reference_pairs(probs: list[float]) -> dict:
    """Each pair twice: (P, 1) and (1 - P, 0); Brier = mean (1 - P)^2, log loss = mean -ln P."""
    return reference_block([(p, 1) for p in probs] + [(1 - p, 0) for p in probs], probs)


def assert_block(got: dict, want: dict) -> None:
    assert set(got) == {"ece", "brier", "log_loss", "bins"} and len(got["bins"]) == 10
    for key in ("ece", "brier", "log_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    for g, w in zip(got["bins"], want["bins"]):
        assert set(g) == {"count", "mean_predicted", "observed"} and g["count"] == w["count"]
        for key in ("mean_predicted", "observed"):
            assert (g[key] is None) == (w[key] is None)
            if w[key] is not None:
                assert g[key] == pytest.approx(w[key], rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------ saved models
def with_temperature(source: Path, target: Path, temperature: float) -> Path:
    """A copy of ``source`` whose tinyrm.json holds ``temperature``."""
    shutil.copytree(source, target)
    config = RewardConfig.load(target)
    config.calibration = {"method": "temperature", "temperature": temperature, "n": 0, "data": []}
    config.save(target)
    return target


def items_of(path: Path) -> list[tuple[str, str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]


def cpu(path) -> RewardModel:
    rm = load(str(path), device="cpu")
    if hasattr(rm, "engine"):
        rm.engine.config.precision = "fp32"
    return rm
