"""Preference data: JSONL files and Hugging Face datasets of (prompt, chosen, rejected) rows.

A malformed row stops loading with ``path:line: reason`` unless ``skip_bad_rows`` is set, in
which case it is skipped and counted, so no row is ever silently mislabelled.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = ("prompt", "chosen", "rejected")
OPTIONAL_FIELDS = ("id", "domain", "subset", "source")
HUB_PREFIX = "hub:"
T = TypeVar("T")


class DataError(ValueError):
    """A row or file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    id: str | None = None
    domain: str | None = None
    subset: str | None = None
    source: str | None = None


@dataclass
class DataConfig:
    """Where training/eval pairs come from."""

    files: list[str] = field(default_factory=list)  # JSONL paths, globs, or hub:NAME[:SPLIT]
    skip_bad_rows: bool = False


@dataclass
class LoadReport:
    pairs: list[PreferencePair]
    skipped: int = 0
    per_file: dict[str, int] = field(default_factory=dict)


def validate_row(row: object) -> PreferencePair:
    """Check one decoded row; raise ``ValueError`` with the reason (no location)."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    values: dict[str, str | None] = {}
    for key in REQUIRED_FIELDS:
        if key not in row:
            raise ValueError(f"missing field {key!r}")
        value = row[key]
        if not isinstance(value, str):
            raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
        values[key] = value
    for key in ("chosen", "rejected"):
        if not values[key].strip():
            raise ValueError(f"field {key!r} is empty")
    for key in OPTIONAL_FIELDS:
        value = row.get(key)
        if value is not None and not isinstance(value, (str, int)):
            raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
        values[key] = None if value is None else str(value)
    return PreferencePair(**values)  # type: ignore[arg-type]


class JsonlRows(Generic[T]):
    """Iterates ``(line_no, decoded_object, parse(decoded_object))`` over a JSONL file.

    A line that is not JSON or that ``parse`` rejects (``ValueError``) raises ``DataError`` with
    ``path:line: reason``, or with ``skip_bad_rows`` is logged, skipped and counted in ``skipped``.
    """

    def __init__(self, path: str | Path, parse: Callable[[object], T], skip_bad_rows: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        self.parse = parse
        self.skip_bad_rows = skip_bad_rows
        self.skipped = 0

    def __iter__(self) -> Iterator[tuple[int, object, T]]:
        with self.path.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    parsed = self.parse(obj)
                except (json.JSONDecodeError, ValueError) as error:
                    reason = f"bad JSON ({error.msg})" if isinstance(error, json.JSONDecodeError) else str(error)
                    if not self.skip_bad_rows:
                        raise DataError(f"{self.path}:{line_no}: {reason}") from None
                    logger.warning("%s:%d: skipped: %s", self.path, line_no, reason)
                    self.skipped += 1
                    continue
                yield line_no, obj, parsed


def read_jsonl(path: str | Path, skip_bad_rows: bool = False) -> LoadReport:
    """Read one JSONL file of preference pairs. The subset defaults to the file's stem."""
    rows = JsonlRows(path, validate_row, skip_bad_rows)
    pairs: list[PreferencePair] = []
    for _, _, pair in rows:
        if pair.subset is None:
            pair = PreferencePair(**{**pair.__dict__, "subset": rows.path.stem})
        pairs.append(pair)
    return LoadReport(pairs=pairs, skipped=rows.skipped, per_file={str(rows.path): len(pairs)})


def write_records(records: Iterable[dict], path: str | Path) -> Path:
    """Write dicts as JSONL (UTF-8), creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path


def parse_hub_spec(spec: str) -> tuple[str, str]:
    """``hub:NAME[:SPLIT]`` -> (NAME, SPLIT); SPLIT defaults to ``train``."""
    body = spec[len(HUB_PREFIX) :]
    if not body:
        raise DataError(f"{spec}: expected hub:NAME[:SPLIT]")
    name, _, split = body.partition(":")
    return name, split or "train"


def read_hub(spec: str, skip_bad_rows: bool = False) -> LoadReport:
    """Load a Hugging Face dataset (hub id or local ``save_to_disk`` folder) with our columns."""
    import datasets

    name, split = parse_hub_spec(spec)
    if Path(name).is_dir() and (Path(name) / "dataset_dict.json").exists():
        dataset = datasets.load_from_disk(name)[split]
    elif Path(name).is_dir() and (Path(name) / "dataset_info.json").exists():
        dataset = datasets.load_from_disk(name)
    else:
        dataset = datasets.load_dataset(name, split=split)
    missing = [key for key in REQUIRED_FIELDS if key not in dataset.column_names]
    if missing:
        raise DataError(f"{spec}: dataset has no column(s) {missing}; columns are {dataset.column_names}")
    pairs: list[PreferencePair] = []
    skipped = 0
    for index, row in enumerate(dataset):
        try:
            pair = validate_row(row)
        except ValueError as error:
            if not skip_bad_rows:
                raise DataError(f"{spec}:row {index}: {error}") from None
            skipped += 1
            continue
        if pair.subset is None:
            pair = PreferencePair(**{**pair.__dict__, "subset": Path(name).name})
        pairs.append(pair)
    return LoadReport(pairs=pairs, skipped=skipped, per_file={spec: len(pairs)})


def expand_sources(sources: Iterable[str]) -> list[str]:
    """Expand globs; keep hub specs; a pattern that matches nothing is an error."""
    expanded: list[str] = []
    for source in sources:
        if source.startswith(HUB_PREFIX):
            expanded.append(source)
            continue
        matches = sorted(glob.glob(source)) if any(ch in source for ch in "*?[") else [source]
        if not matches:
            raise DataError(f"{source}: pattern matches no file")
        expanded.extend(matches)
    return expanded


def load_pairs(sources: Sequence[str], skip_bad_rows: bool = False) -> LoadReport:
    """Load and mix several JSONL files / hub datasets, in the order given."""
    if not sources:
        raise DataError("no data given (pass --data FILE...)")
    report = LoadReport(pairs=[])
    for source in expand_sources(sources):
        part = (read_hub if source.startswith(HUB_PREFIX) else read_jsonl)(source, skip_bad_rows)
        report.pairs.extend(part.pairs)
        report.skipped += part.skipped
        report.per_file.update(part.per_file)
    if report.skipped:
        logger.warning("skipped %d malformed row(s)", report.skipped)
    return report


def stratified_sample(pairs: Sequence[PreferencePair], n: int, seed: int) -> list[PreferencePair]:
    """``n`` pairs (seeded, shuffled) with the same share from every domain.

    A domain with fewer rows than its share gives all it has and the others fill the rest, so a
    mix dominated by one domain (the shared data is half safety) does not teach only that domain.
    """
    import random

    rng = random.Random(seed)
    by_domain: dict[str, list[PreferencePair]] = {}
    for pair in pairs:
        by_domain.setdefault(pair.domain or "", []).append(pair)
    for rows in by_domain.values():
        rng.shuffle(rows)
    target = min(n, len(pairs))
    chosen: list[PreferencePair] = []
    remaining = dict(sorted(by_domain.items()))
    while len(chosen) < target:
        share = max(1, (target - len(chosen)) // len(remaining))
        for name in list(remaining):
            take, remaining[name] = remaining[name][:share], remaining[name][share:]
            chosen.extend(take[: target - len(chosen)])
            if not remaining[name]:
                del remaining[name]
    rng.shuffle(chosen)
    return chosen
