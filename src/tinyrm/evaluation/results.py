"""The results JSON of a pairwise evaluation, its file and its table, and the ``--predictions`` file.

A pair counts as correct only if P(chosen better) > 0.5: a tie is wrong. Overall and for every
subset and domain the results carry ``length_bias`` (:mod:`tinyrm.evaluation.length_bias`) and
``calibration`` (ECE, Brier score, log loss and a 10-bin reliability diagram:
:mod:`tinyrm.evaluation.calibration`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..data import PreferencePair, write_records
from ..outputs import replacing
from .calibration import COLUMNS as CALIBRATION_COLUMNS
from .calibration import pair_calibration
from .calibration import table_cells as calibration_cells
from .length_bias import COLUMNS as LENGTH_COLUMNS
from .length_bias import length_bias, table_cells


def _group(pairs: Sequence[PreferencePair], probs_chosen: Sequence[float],
           keys: Sequence[str | None]) -> dict[str, dict]:
    members: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        if key is not None:
            members[key].append(index)
    out: dict[str, dict] = {}
    for key, indices in sorted(members.items()):
        probs = [probs_chosen[i] for i in indices]
        out[key] = {"accuracy": sum(p > 0.5 for p in probs) / len(indices), "n": len(indices),
                    "length_bias": length_bias([pairs[i] for i in indices], probs),
                    "calibration": pair_calibration(probs)}
    return out


def score_pairs(
    probs_chosen: Sequence[float], pairs: Sequence[PreferencePair], model_name: str
) -> dict:
    """The results JSON from P(chosen better) per pair."""
    if len(pairs) != len(probs_chosen):
        raise ValueError(f"{len(pairs)} pairs but {len(probs_chosen)} probabilities")
    correct = [p > 0.5 for p in probs_chosen]
    n = len(pairs)
    return {
        "model": model_name,
        "accuracy": sum(correct) / n if n else 0.0,
        "n": n,
        "length_bias": length_bias(pairs, probs_chosen),
        "calibration": pair_calibration(probs_chosen),
        "subsets": _group(pairs, probs_chosen, [p.subset for p in pairs]),
        "domains": _group(pairs, probs_chosen, [p.domain for p in pairs]),
    }


def prediction_records(probs_chosen: Sequence[float], pairs: Sequence[PreferencePair]) -> list[dict]:
    """One ``{"id", "subset", "domain", "prob_chosen"}`` per pair, in input order (keys only where the row
    has them): with the input file, enough to recompute every figure of the results JSON."""
    records = []
    for pair, prob in zip(pairs, probs_chosen, strict=True):
        record = {key: getattr(pair, key) for key in ("id", "subset", "domain") if getattr(pair, key) is not None}
        record["prob_chosen"] = float(prob)
        records.append(record)
    return records


def write_predictions(probs_chosen: Sequence[float], pairs: Sequence[PreferencePair], path: str | Path) -> Path:
    """``tinyrm eval --predictions FILE``: :func:`prediction_records` as JSONL (written whole or not at all)."""
    with replacing(path) as tmp:
        write_records(prediction_records(probs_chosen, pairs), tmp)
    return Path(path)


def write_results(results: dict, path: str | Path) -> None:
    """The results JSON (``--output``), written whole or not at all."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def results_table(results: dict, title: str | None = None):
    """A rich table: overall, then per subset and per domain."""
    from rich.table import Table

    calibrated = f" (calibrated: temperature {results['temperature']:.4g})" if results.get("temperature") else ""
    table = Table(title=title or f"tinyrm eval: {results['model']}{calibrated}")
    table.add_column("group")
    table.add_column("name")
    table.add_column("accuracy", justify="right")
    table.add_column("n", justify="right")
    for column in (*LENGTH_COLUMNS, *CALIBRATION_COLUMNS):
        table.add_column(column, justify="right")
    table.add_row("overall", "all", f"{results['accuracy']:.4f}", str(results["n"]),
                  *table_cells(results.get("length_bias")), *calibration_cells(results.get("calibration")))
    for group in ("domains", "subsets"):
        for name, row in results.get(group, {}).items():
            table.add_row(group[:-1], name, f"{row['accuracy']:.4f}", str(row["n"]),
                          *table_cells(row.get("length_bias")), *calibration_cells(row.get("calibration")))
    return table
