"""Pairwise accuracy of a reward model, overall and per subset / domain.

A pair counts as correct only if P(chosen better) > 0.5: a tie is wrong.
"""

from __future__ import annotations

import inspect
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .data import PreferencePair, load_pairs


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


def _group(correct: Sequence[bool], keys: Sequence[str | None]) -> dict[str, dict]:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ok, key in zip(correct, keys):
        if key is None:
            continue
        totals[key][0] += int(ok)
        totals[key][1] += 1
    return {k: {"accuracy": c / n, "n": n} for k, (c, n) in sorted(totals.items())}


def score_pairs(
    probs_chosen: Sequence[float], pairs: Sequence[PreferencePair], model_name: str
) -> dict:
    """The results JSON from P(chosen better) per pair."""
    correct = [p > 0.5 for p in probs_chosen]
    n = len(pairs)
    return {
        "model": model_name,
        "accuracy": sum(correct) / n if n else 0.0,
        "n": n,
        "subsets": _group(correct, [p.subset for p in pairs]),
        "domains": _group(correct, [p.domain for p in pairs]),
    }


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
    from .model import RewardModel

    pairs = load_pairs(config.data, skip_bad_rows=config.skip_bad_rows).pairs
    rm = RewardModel.from_pretrained(config.model, max_length=config.max_length, template=config.template,
                                     prefix=config.prefix)
    results = evaluate_pairs(rm, pairs, batch_size=config.batch_size, single_order=config.single_order,
                             max_batch_tokens=config.max_batch_tokens)
    if config.output:
        write_results(results, config.output)
    return results


def write_results(results: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def results_table(results: dict, title: str | None = None):
    """A rich table: overall, then per subset and per domain."""
    from rich.table import Table

    table = Table(title=title or f"tinyrm eval: {results['model']}")
    table.add_column("group")
    table.add_column("name")
    table.add_column("accuracy", justify="right")
    table.add_column("n", justify="right")
    table.add_row("overall", "all", f"{results['accuracy']:.4f}", str(results["n"]))
    for group in ("domains", "subsets"):
        for name, row in results.get(group, {}).items():
            table.add_row(group[:-1], name, f"{row['accuracy']:.4f}", str(row["n"]))
    return table
