"""Pairwise accuracy of a reward model (any kind, or anything with ``compare_batch``), overall and
per subset / domain.

A pair counts as correct only if P(chosen better) > 0.5: a tie is wrong.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..auto import load
from ..data import PreferencePair, load_pairs
from ..inference.adaptive import both_orders_value, order_report, orders_from_cli, stats_of
from ..inference.packed import apply_attention
from ..progress import progress_bar
from ..temperature import model_temperature, use_calibration
from .heuristics import LENGTH_REFERENCE, HeuristicScorer, length_reference
from .results import score_pairs, write_predictions, write_results

# Pairs per progress-bar step on CPU: small enough for a bar that moves, large enough to fill batches.
CHUNK_PAIRS = 256


@dataclass
class EvalConfig:
    model: str = "default"
    data: list[str] = field(default_factory=list)
    output: str | None = None
    batch_size: int = 32
    max_length: int | None = None
    single_order: bool = False
    skip_bad_rows: bool = False
    template: str | None = None  # override for checkpoints without tinyrm.json
    prefix: str | None = None
    max_batch_tokens: int | None = None  # padded tokens per forward pass (None = engine default)
    orders: str | None = None  # both | one | auto (tinyrm.inference.adaptive); None: from single_order
    order_margin: float | None = None  # orders=auto: swapped order only where |P - 0.5| < margin
    precision: str | None = None  # auto | bf16 | fp32 | int8 (None: the engine's default, auto)
    predictions: str | None = None  # JSONL: {"id", "subset", "domain", "prob_chosen"} per pair, in input order
    attention: str | None = None  # auto | packed | padded (tinyrm.inference.packed; None: the engine's default)
    progress: bool = True  # a progress bar on stderr (pairs, pairs/s), as `tinyrm score` has
    calibrated: bool = True  # False: the raw probabilities even where tinyrm.json holds a temperature


def accepts_domains(scorer) -> bool:
    """Whether ``scorer.compare_batch`` takes ``domains=`` (cloze models do; baselines, routes may not)."""
    try:
        return "domains" in inspect.signature(scorer.compare_batch).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def chunk_size(scorer) -> int:
    """Pairs per :func:`pair_probs` piece: :data:`CHUNK_PAIRS`, or whole pipeline chunks where the engine
    overlaps tokenisation with its forward passes (GPU), so that pipeline keeps running."""
    engine = getattr(scorer, "engine", None)
    try:
        if engine is not None and engine.overlap_enabled(1 << 62):
            return 4 * int(engine.config.chunk_pairs)
    except (AttributeError, TypeError, ValueError):
        pass
    return CHUNK_PAIRS


def pair_probs(scorer, pairs: Sequence[PreferencePair], batch_size: int = 32, both_orders=None,
               progress: bool = False, desc: str = "eval", domains: Sequence[str | None] | None = None,
               **extra) -> list[float]:
    """P(chosen better) per pair from ``scorer.compare_batch``, piece by piece with a progress bar on stderr
    (pairs and pairs/s, :func:`tinyrm.progress.progress_bar`; ``progress=False``: none). ``domains``: one
    per pair, passed on per piece; ``extra``: more ``compare_batch`` keywords."""
    items = [(p.prompt, p.chosen, p.rejected) for p in pairs]
    # A heuristic answers at once (and its seeded coin flips must not restart per piece).
    size = max(len(items), 1) if isinstance(scorer, HeuristicScorer) else chunk_size(scorer)
    probs: list[float] = []
    with progress_bar(len(items), desc, " pairs", enabled=progress) as bar:
        for start in range(0, len(items), size):
            piece = items[start : start + size]
            more = extra if domains is None else {**extra, "domains": list(domains[start : start + size])}
            probs += scorer.compare_batch(piece, batch_size=batch_size, both_orders=both_orders, **more)
            bar.update(len(piece))
    return probs


def evaluate_pairs(rm, pairs: Sequence[PreferencePair], batch_size: int = 32, single_order: bool = False,
                   max_batch_tokens: int | None = None, orders: str | None = None,
                   order_margin: float | None = None, predictions: str | None = None,
                   progress: bool = False) -> dict:
    """``orders="auto"`` adds ``orders``, ``order_margin``, ``second_passes`` and ``second_pass_fraction``
    to the results (``tinyrm.inference.adaptive``). ``predictions``: a JSONL file of P(chosen better) per
    pair (``tinyrm.evaluation.results.write_predictions``). ``progress``: a bar on stderr (:func:`pair_probs`)."""
    orders = orders_from_cli(orders, single_order)
    # Only cloze models take a token budget; other objectives' compare_batch may not.
    extra = {} if max_batch_tokens is None else {"max_batch_tokens": max_batch_tokens}
    # Each pair's domain picks its prefix (RewardConfig.domain_prefixes).
    domains = [p.domain for p in pairs] if accepts_domains(rm) else None
    if orders == "auto":
        extra["order_margin"] = order_margin
        before = stats_of(rm)
    probs = pair_probs(rm, pairs, batch_size=batch_size, both_orders=both_orders_value(orders), progress=progress,
                       domains=domains, **extra)
    results = score_pairs(probs, pairs, rm.name)
    if (temperature := model_temperature(rm)) is not None:  # the probabilities were calibrated with it
        results["temperature"] = temperature
    if predictions:
        write_predictions(probs, pairs, predictions)
    return {**results, **order_report(rm, before, order_margin)} if orders == "auto" else results


def evaluate(config: EvalConfig) -> dict:
    pairs = load_pairs(config.data, skip_bad_rows=config.skip_bad_rows).pairs
    rm = load(config.model, max_length=config.max_length, template=config.template, prefix=config.prefix,
              precision=config.precision)
    apply_attention(rm, config.attention)
    use_calibration(rm, config.calibrated)
    results = evaluate_pairs(rm, pairs, batch_size=config.batch_size, single_order=config.single_order,
                             max_batch_tokens=config.max_batch_tokens, orders=config.orders,
                             order_margin=config.order_margin, predictions=config.predictions,
                             progress=config.progress)
    results[LENGTH_REFERENCE] = length_reference(pairs)  # the length heuristic on the same pairs (--plot)
    if config.output:
        write_results(results, config.output)
    return results
