"""The results JSON of a pairwise evaluation, its file and its table.

A pair counts as correct only if P(chosen better) > 0.5: a tie is wrong.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..data import PreferencePair


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
