"""Heuristic references for every report: "the longer response wins" and a seeded coin flip.

Each yields P(a better than b) per ``(prompt, a, b)`` so it goes through the same scoring as a
model: 1.0 or 0.0 for a decision, 0.5 for a tie (equal lengths), which counts as wrong like any tie.
``HeuristicScorer`` has the ``compare_batch`` interface of a reward model, so benchmarks and
``tinyrm eval --benchmark rewardbench --baseline ...`` treat it like one.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from ..data import PreferencePair
from .results import score_pairs, write_predictions

BASELINES = ("length", "random")
PairInput = tuple[str, str, str]


def length_probs(items: Iterable[PairInput]) -> list[float]:
    """The longer response (in characters, so independent of any tokenizer) wins; equal lengths tie."""
    out = []
    for _, a, b in items:
        out.append(1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5)
    return out


def random_probs(n: int, seed: int = 0) -> list[float]:
    """``n`` seeded fair coin flips (same seed -> same choices)."""
    rng = random.Random(seed)
    return [1.0 if rng.random() < 0.5 else 0.0 for _ in range(n)]


class HeuristicScorer:
    """``length`` or seeded ``random`` with the ``compare_batch`` interface of a reward model."""

    def __init__(self, kind: str, seed: int = 0) -> None:
        if kind not in BASELINES:
            raise ValueError(f"unknown baseline {kind!r}; choose from {list(BASELINES)}")
        self.kind = kind
        self.seed = seed
        self.name = f"baseline:random(seed={seed})" if kind == "random" else f"baseline:{kind}"

    def compare_batch(self, items: Iterable[PairInput], batch_size: int = 32,
                      both_orders: bool | None = None) -> list[float]:
        """``batch_size`` and ``both_orders`` are accepted for interface parity and change nothing."""
        items = list(items)
        return length_probs(items) if self.kind == "length" else random_probs(len(items), self.seed)

    def compare(self, prompt: str, a: str, b: str, both_orders: bool | None = None) -> float:
        return self.compare_batch([(prompt, a, b)])[0]


# The results JSON's field with the length heuristic's accuracy on the same pairs (tinyrm eval writes it;
# the pictures of tinyrm.evaluation.plots draw it beside the model's).
LENGTH_REFERENCE = "length_heuristic"


def length_reference(pairs: Sequence[PreferencePair]) -> dict:
    """``{"accuracy", "n", "subsets": {name: {"accuracy", "n"}}, "domains": {...}}`` of the ``length``
    heuristic on ``pairs``: the reference a model's accuracy per subset is read against."""
    results = score_pairs(length_probs((p.prompt, p.chosen, p.rejected) for p in pairs), pairs, "baseline:length")
    slim = {"accuracy": results["accuracy"], "n": results["n"]}
    for group in ("subsets", "domains"):
        slim[group] = {name: {"accuracy": row["accuracy"], "n": row["n"]} for name, row in results[group].items()}
    return slim


def heuristic_results(kind: str, pairs: Sequence[PreferencePair], seed: int = 0,
                      predictions: str | None = None) -> dict:
    """The core results dict (accuracy, length_bias, subsets, domains) of a heuristic on ``pairs``;
    ``predictions``: also write P(chosen better) per pair there (``results.write_predictions``)."""
    scorer = HeuristicScorer(kind, seed=seed)
    probs = scorer.compare_batch([(p.prompt, p.chosen, p.rejected) for p in pairs])
    if predictions:
        write_predictions(probs, pairs, predictions)
    return score_pairs(probs, pairs, scorer.name)
