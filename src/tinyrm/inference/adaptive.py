"""Adaptive order: the swapped order only where the first one is undecided.

Scoring averages P(a better) over both presentation orders to remove position bias, which costs two
forward passes per pair. ``both_orders="auto"`` (``RewardModel.compare`` / ``compare_batch``;
``tinyrm eval/compare --orders auto``) scores the given order first and runs the swapped order only
for pairs whose first P lies within ``order_margin`` of 0.5 (``|P - 0.5| < margin``); those pairs
get the both-orders average, exactly as ``both_orders=True`` computes it, the others keep their
one-order P. ``margin >= 0.5`` is full both-orders scoring, ``margin == 0`` one-order scoring.

The engine counts what was run in ``rm.engine.order_stats`` (cumulative :class:`OrderStats`), and
``tinyrm eval --orders auto`` writes ``orders``, ``order_margin``, ``second_passes`` and
``second_pass_fraction`` into its results JSON. The bf16 / int8 ``recheck_margin`` guard applies
as in the other modes: near-ties of the final P are re-scored in fp32, in the orders they were
scored in. Savings, speed-up and agreement with full both-orders scoring on real data are measured
by ``benchmarks/adaptive_order.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ORDERS = ("both", "one", "auto")
DEFAULT_ORDER_MARGIN = 0.25


@dataclass
class OrderStats:
    """Pairs scored with ``both_orders="auto"`` and how many of them needed the swapped order."""

    pairs: int = 0
    second_passes: int = 0

    @property
    def saved(self) -> int:
        """Second passes not run (each a forward pass over one encoding)."""
        return self.pairs - self.second_passes

    @property
    def second_pass_fraction(self) -> float:
        return self.second_passes / self.pairs if self.pairs else 0.0

    def __sub__(self, other: OrderStats) -> OrderStats:
        return OrderStats(self.pairs - other.pairs, self.second_passes - other.second_passes)

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "second_passes": self.second_passes, "saved": self.saved,
                "second_pass_fraction": self.second_pass_fraction}


def check_margin(margin: float) -> float:
    margin = float(margin)
    if not 0.0 <= margin <= 0.5:
        raise ValueError(f"order_margin must be in [0, 0.5], got {margin}")
    return margin


@dataclass(frozen=True)
class AutoOrder:
    """The engine's ``both`` value for adaptive order (truthy: both orders are encoded up front,
    which costs little, since every text is tokenised once and cached)."""

    margin: float = DEFAULT_ORDER_MARGIN

    def needs_second(self, p: float) -> bool:
        return abs(p - 0.5) < self.margin

    def score(self, engine, encodings: Sequence, n: int, batch_size, budget) -> list[float]:
        """P(a better) for the ``n`` pairs of a chunk; ``encodings`` = the n given orders, then the n swapped."""
        if self.margin >= 0.5:  # every pair needs both orders: the both-orders path (shared batches)
            engine.order_stats.pairs += n
            engine.order_stats.second_passes += n
            return engine._score_chunk(encodings, n, True, batch_size, budget)
        first = engine.run_units(encodings, [[i] for i in range(n)], batch_size, budget)
        second = [i for i in range(n) if self.needs_second(first[i])]
        if second:
            swapped = engine.run_units(encodings, [[n + i] for i in second], batch_size, budget)
        scores = list(first[:n])
        for i in second:  # in the swapped order choice 0 is b: P(a better) there is 1 - P(choice 0)
            scores[i] = (first[i] + 1.0 - swapped[n + i]) / 2.0
        engine.order_stats.pairs += n
        engine.order_stats.second_passes += len(second)
        twice = set(second)
        engine.recheck_ties(scores, encodings, [i in twice for i in range(n)], batch_size, budget)
        return scores


def resolve_both_orders(both_orders, default, order_margin: float | None = None):
    """The engine's ``both`` for ``RewardModel.compare_batch(both_orders=...)``: True, False or an
    :class:`AutoOrder`. ``default`` (the model's ``config.both_orders``) stands in for None."""
    both = default if both_orders is None else both_orders
    if isinstance(both, str):
        if both != "auto":
            raise ValueError(f"both_orders must be True, False or 'auto', got {both!r}")
        return AutoOrder(check_margin(DEFAULT_ORDER_MARGIN if order_margin is None else order_margin))
    if order_margin is not None:
        raise ValueError("order_margin applies to both_orders='auto' only")
    return bool(both)


def orders_from_cli(orders: str | None, single_order: bool = False) -> str:
    """``--orders both|one|auto`` and the older ``--single-order`` flag, as one of ORDERS."""
    if orders is None:
        return "one" if single_order else "both"
    if orders not in ORDERS:
        raise ValueError(f"--orders must be one of {ORDERS}, got {orders!r}")
    if single_order and orders != "one":
        raise ValueError(f"--single-order contradicts --orders {orders}")
    return orders


def both_orders_value(orders: str):
    """``compare_batch(both_orders=...)`` for an ORDERS name."""
    return {"both": True, "one": False, "auto": "auto"}[orders]


def stats_of(scorer) -> OrderStats:
    """A copy of ``scorer.engine.order_stats``; ``ValueError`` for scorers that score a pair in one pass."""
    stats = getattr(getattr(scorer, "engine", None), "order_stats", None)
    if not isinstance(stats, OrderStats):
        raise ValueError(f"orders 'auto' applies to cloze reward models, which score each order in its own "
                         f"pass; {type(scorer).__name__} does not")
    return OrderStats(stats.pairs, stats.second_passes)


def order_report(scorer, before: OrderStats, margin: float | None) -> dict:
    """The results-JSON fields of an ``orders="auto"`` run: what it ran since ``before``."""
    run = stats_of(scorer) - before
    return {"orders": "auto", "order_margin": DEFAULT_ORDER_MARGIN if margin is None else margin,
            "second_passes": run.second_passes, "second_pass_fraction": run.second_pass_fraction}
