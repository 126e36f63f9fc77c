"""The two kinds of row a scoring job takes, told apart per row, and their checks.

- a pair: ``{"prompt", "chosen", "rejected"}`` (kind ``pair``, scored as ``prob_chosen``) or
  ``{"prompt", "a", "b"}`` (kind ``ab``, scored as ``prob_a``);
- a candidate set: ``{"prompt", "candidates": [...]}`` (kind ``set``, scored as ``scores`` and ``ranking``).

A field whose value is null counts as absent, so a Parquet table may hold rows of every kind side by
side. Any other field is passed through untouched. ``parse_row`` raises ``ValueError`` with the reason;
the readers add the location (``path:line: reason``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PAIR, AB, SET = "pair", "ab", "set"
KIND_FIELDS: dict[str, tuple[str, ...]] = {PAIR: ("chosen", "rejected"), AB: ("a", "b"), SET: ("candidates",)}
# The fields read (``domain``: a pair's instruction prefix, as in ``tinyrm eval``); the rest pass through.
ROW_FIELDS = ("prompt", "chosen", "rejected", "a", "b", "candidates", "domain")
# What scoring adds to a row (a row of another kind has none of its kind's columns, or nulls in Parquet).
PROB_COLUMN = {PAIR: "prob_chosen", AB: "prob_a"}
SCORES, RANKING, BEST, BEST_INDEX = "scores", "ranking", "best", "best_index"
ADDED_COLUMNS = ("prob_chosen", "prob_a", SCORES, RANKING, BEST, BEST_INDEX)


@dataclass(frozen=True)
class ScoreRow:
    kind: str  # pair | ab | set
    prompt: str
    a: str | None = None  # chosen (pair) or a (ab)
    b: str | None = None  # rejected (pair) or b (ab)
    candidates: tuple[str, ...] | None = None  # set
    domain: str | None = None  # picks the prefix of a model trained with --domain-prefixes (pairs)


def _text(row: dict[str, Any], key: str, non_empty: bool) -> str:
    value = row.get(key)
    if value is None:
        raise ValueError(f"missing field {key!r}")
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    if non_empty and not value.strip():
        raise ValueError(f"field {key!r} is empty")
    return value


def parse_row(row: object) -> ScoreRow:
    """The kind and texts of one decoded row (a dict); ``ValueError`` says what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    prompt = _text(row, "prompt", non_empty=False)
    kinds = [kind for kind, keys in KIND_FIELDS.items() if any(row.get(key) is not None for key in keys)]
    if not kinds:
        raise ValueError("missing fields: a row needs 'chosen' and 'rejected', 'a' and 'b', or 'candidates'")
    if len(kinds) > 1:
        fields = " / ".join("+".join(KIND_FIELDS[kind]) for kind in kinds)
        raise ValueError(f"a row is a pair (chosen, rejected), an a/b pair or a candidate set, not several: "
                         f"it has {fields}")
    kind = kinds[0]
    domain = None if row.get("domain") is None else str(row["domain"])
    if kind != SET:
        first, second = KIND_FIELDS[kind]
        return ScoreRow(kind, prompt, _text(row, first, True), _text(row, second, True), domain=domain)
    candidates = row["candidates"]
    if hasattr(candidates, "tolist") and not isinstance(candidates, (str, bytes)):
        candidates = candidates.tolist()  # numpy arrays from Arrow conversions
    if not isinstance(candidates, (list, tuple)):
        raise ValueError(f"field 'candidates' must be a list of strings, got {type(candidates).__name__}")
    if not candidates:
        raise ValueError("field 'candidates' is empty")
    for index, candidate in enumerate(candidates):
        if not isinstance(candidate, str):
            raise ValueError(f"candidates[{index}] must be a string, got {type(candidate).__name__}")
    return ScoreRow(SET, prompt, candidates=tuple(candidates), domain=domain)
