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
from .results import score_pairs, write_results


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


def accepts_domains(scorer) -> bool:
    """Whether ``scorer.compare_batch`` takes ``domains=`` (cloze models do; baselines, routes may not)."""
    try:
        return "domains" in inspect.signature(scorer.compare_batch).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def evaluate_pairs(rm, pairs: Sequence[PreferencePair], batch_size: int = 32, single_order: bool = False,
                   max_batch_tokens: int | None = None) -> dict:
    # Only cloze models take a token budget; other objectives' compare_batch may not.
    extra = {} if max_batch_tokens is None else {"max_batch_tokens": max_batch_tokens}
    if accepts_domains(rm):  # each pair's domain picks its prefix (RewardConfig.domain_prefixes)
        extra["domains"] = [p.domain for p in pairs]
    probs = rm.compare_batch(
        [(p.prompt, p.chosen, p.rejected) for p in pairs], batch_size=batch_size, both_orders=not single_order,
        **extra,
    )
    return score_pairs(probs, pairs, rm.name)


def evaluate(config: EvalConfig) -> dict:
    pairs = load_pairs(config.data, skip_bad_rows=config.skip_bad_rows).pairs
    rm = load(config.model, max_length=config.max_length, template=config.template, prefix=config.prefix)
    results = evaluate_pairs(rm, pairs, batch_size=config.batch_size, single_order=config.single_order,
                             max_batch_tokens=config.max_batch_tokens)
    if config.output:
        write_results(results, config.output)
    return results
