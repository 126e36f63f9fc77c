"""Preference data: JSONL files and Hugging Face datasets of (prompt, chosen, rejected) rows.

A malformed row stops loading with ``path:line: reason`` unless ``skip_bad_rows`` is set, in which case it is skipped
and counted, so no row is ever silently mislabelled. Every JSONL reader of the package (pairs, process rows, rank and
score input, SFT text) reads its lines with :func:`jsonl_lines` and :func:`parse_json_line`, so ``path:line`` and the
reasons mean the same everywhere: lines end at ``\\n``; a line of ASCII whitespace is blank and skipped; a UTF-8
byte-order mark at the start of the file is dropped; a line that is not UTF-8, not JSON (nested too deeply, an integer
too long) or holds a lone surrogate (``"\\ud800"``, which no text encoding can write) is a bad row; a file without a
non-blank line is an error (``path: no rows``).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, TypeVar

from .errors import not_a_file

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
    skipped_rows: list[tuple[str, str]] = field(default_factory=list)  # (location, reason)


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


UTF8_BOM = b"\xef\xbb\xbf"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
LONE_SURROGATE = "a \\u escape makes a lone surrogate, which is not text"


def is_text(value: str) -> bool:
    """False for a string holding a lone surrogate (``"\\ud800"``): JSON can escape one and Python holds it, but
    no encoding writes it and no tokenizer takes it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


MAX_DEPTH = 100  # JSON nesting a row may have


def jsonl_lines(path: str | Path, start: int = 0, first_line: int = 1) -> Iterator[tuple[int, int, bytes]]:
    """``(line number, byte offset, bytes)`` of each non-blank line of a JSONL file, read from the byte
    offset ``start`` (the start of line ``first_line``). A missing file raises ``DataError`` (``path: no
    such file``); from the file's start (``start`` 0), so does a file without a non-blank line (``path: no rows``)."""
    if not Path(path).is_file():
        raise DataError(not_a_file(path))
    offset, seen = start, False
    with open(path, "rb") as handle:
        handle.seek(start)
        for line_no, raw in enumerate(handle, start=first_line):
            line = raw[len(UTF8_BOM):] if offset == 0 and raw.startswith(UTF8_BOM) else raw
            if line.strip():
                seen = True
                yield line_no, offset, line
            offset += len(raw)
    if start == 0 and not seen:
        raise DataError(f"{path}: no rows (the file is empty or holds only blank lines)")


def parse_json_line(raw: bytes | str) -> object:
    """The JSON value of one line; ``ValueError`` with the reason (``not UTF-8 text (...)``, ``bad JSON (...)``)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1})") from None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"bad JSON ({error.msg})") from None
    except RecursionError:
        raise ValueError(f"bad JSON (nested more than {MAX_DEPTH} deep)") from None
    except ValueError as error:  # an integer of more than 4300 digits
        raise ValueError(f"bad JSON ({str(error).partition(':')[0]})") from None
    if _SURROGATE_ESCAPE.search(raw) or raw.count("[") + raw.count("{") > MAX_DEPTH:
        _check_value(value)
    return value


def _check_value(value: object) -> None:
    """``ValueError`` for a value nested more than ``MAX_DEPTH`` deep (writing it back, ``json.dumps``
    would run out of stack) or holding a string with a lone surrogate."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not is_text(item):
                raise ValueError(f"bad JSON ({LONE_SURROGATE})")
        elif isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise ValueError(f"bad JSON (nested more than {MAX_DEPTH} deep)")
            children = [*item, *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


class JsonlRows(Generic[T]):
    """Iterates ``(line_no, decoded_object, parse(decoded_object))`` over a JSONL file.

    A line that is not JSON or that ``parse`` rejects (``ValueError``) raises ``DataError`` with
    ``path:line: reason``, or with ``skip_bad_rows`` is logged, skipped and counted in ``skipped``."""

    def __init__(self, path: str | Path, parse: Callable[[object], T], skip_bad_rows: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(not_a_file(self.path))
        self.parse = parse
        self.skip_bad_rows = skip_bad_rows
        self.skipped = 0
        self.skipped_rows: list[tuple[str, str]] = []  # ("path:line", reason) of each skipped row

    def __iter__(self) -> Iterator[tuple[int, object, T]]:
        for line_no, _, line in jsonl_lines(self.path):
            try:
                obj = parse_json_line(line)
                parsed = self.parse(obj)
            except ValueError as error:
                reason = str(error)
                if not self.skip_bad_rows:
                    raise DataError(f"{self.path}:{line_no}: {reason}") from None
                logger.warning("%s:%d: skipped: %s", self.path, line_no, reason)
                self.skipped += 1
                self.skipped_rows.append((f"{self.path}:{line_no}", reason))
                continue
            yield line_no, obj, parsed


def read_jsonl(path: str | Path, skip_bad_rows: bool = False) -> LoadReport:
    """Read one JSONL file of preference pairs. The subset defaults to the file's stem."""
    report = LoadReport(pairs=[])
    report.pairs.extend(iter_pairs(str(path), skip_bad_rows, report))
    return report


def iter_pairs(source: str, skip_bad_rows: bool, report: LoadReport) -> Iterator[PreferencePair]:
    """Stream one source's pairs (a JSONL file or ``hub:NAME[:SPLIT]``) without holding them.

    Once the iterator is exhausted, ``report`` counts the source's pairs in ``per_file`` and its
    skipped rows in ``skipped`` (with their ``(location, reason)`` in ``skipped_rows``).
    """
    if source.startswith(HUB_PREFIX):
        yield from _hub_pairs(source, skip_bad_rows, report)
        return
    rows = JsonlRows(source, validate_row, skip_bad_rows)
    count = 0
    for _, _, pair in rows:
        if pair.subset is None:
            pair = replace(pair, subset=rows.path.stem)
        count += 1
        yield pair
    report.skipped += rows.skipped
    report.skipped_rows.extend(rows.skipped_rows)
    report.per_file[str(rows.path)] = count


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


def load_hub_dataset(spec: str, required: Sequence[str] = REQUIRED_FIELDS):
    """The ``datasets.Dataset`` behind ``hub:NAME[:SPLIT]`` (a hub id or a local ``save_to_disk`` folder),
    which must have the ``required`` columns (``tinyrm score`` checks its rows' kinds itself: none)."""
    import datasets

    name, split = parse_hub_spec(spec)
    saved = Path(name).is_dir() and (Path(name) / "dataset_dict.json").exists()  # a DatasetDict's folder
    dataset = datasets.load_from_disk(name) if saved or (Path(name) / "dataset_info.json").is_file() else \
        datasets.load_dataset(name, split=split)
    if saved:
        if split not in dataset:
            raise DataError(f"{spec}: no split {split!r} in {name}; it has {', '.join(dataset)}")
        dataset = dataset[split]
    missing = [key for key in required if key not in dataset.column_names]
    if missing:
        raise DataError(f"{spec}: dataset has no column(s) {missing}; columns are {dataset.column_names}")
    return dataset


def _hub_pairs(spec: str, skip_bad_rows: bool, report: LoadReport) -> Iterator[PreferencePair]:
    dataset = load_hub_dataset(spec)
    stem = Path(parse_hub_spec(spec)[0]).name
    count = 0
    for index, row in enumerate(dataset):
        try:
            pair = validate_row(row)
        except ValueError as error:
            if not skip_bad_rows:
                raise DataError(f"{spec}:row {index}: {error}") from None
            report.skipped += 1
            report.skipped_rows.append((f"{spec}:row {index}", str(error)))
            continue
        if pair.subset is None:
            pair = replace(pair, subset=stem)
        count += 1
        yield pair
    report.per_file[spec] = count


def read_hub(spec: str, skip_bad_rows: bool = False) -> LoadReport:
    """Load a Hugging Face dataset (hub id or local ``save_to_disk`` folder) with our columns."""
    report = LoadReport(pairs=[])
    report.pairs.extend(_hub_pairs(spec, skip_bad_rows, report))
    return report


def expand_sources(sources: Iterable[str]) -> list[str]:
    """Expand globs (a pattern matching nothing is an error; a file that exists under the name given is that
    file, even as ``split[1].jsonl``); keep hub specs; a file named twice is read once."""
    expanded: dict[str, str] = {}  # the file's absolute path (a hub spec itself) -> the name given
    for source in sources:
        literal = source.startswith(HUB_PREFIX) or Path(source).exists() or not any(ch in source for ch in "*?[")
        matches = [source] if literal else sorted(glob.glob(source))
        if not matches:
            raise DataError(f"{source}: pattern matches no file")
        for match in matches:
            key = match if match.startswith(HUB_PREFIX) else os.path.abspath(match)
            if key in expanded:
                logger.warning("%s is named twice in the data; it is read once", match)
            expanded.setdefault(key, match)
    return list(expanded.values())


def load_pairs(sources: Sequence[str], skip_bad_rows: bool = False) -> LoadReport:
    """Load and mix several JSONL files / hub datasets, in the order given."""
    if not sources:
        raise DataError("no data given (pass --data FILE...)")
    report = LoadReport(pairs=[])
    for source in expand_sources(sources):
        report.pairs.extend(iter_pairs(source, skip_bad_rows, report))
    if report.skipped:
        logger.warning("skipped %d malformed row(s)", report.skipped)
    if not report.pairs:
        raise no_valid_rows(sources, "pairs", report.skipped)
    return report


def no_valid_rows(sources: Sequence[str], what: str, skipped: int) -> DataError:
    """The error of a load that kept nothing (every row skipped as bad): nothing to train on or evaluate."""
    return DataError(f"{', '.join(map(str, sources))}: no valid {what} ({skipped} bad row(s) skipped)")


def stratified_sample(pairs: Sequence[PreferencePair], n: int, seed: int) -> list[PreferencePair]:
    """``n`` pairs (seeded, shuffled) with the same share from every domain (:func:`stratified_indices`)."""
    return [pairs[i] for i in stratified_indices([pair.domain for pair in pairs], n, seed)]


def stratified_indices(domains: Sequence[str | None], n: int, seed: int) -> list[int]:
    """Indices of ``n`` rows (seeded, shuffled) with the same share from every domain, given each row's domain.

    A domain with fewer rows than its share gives all it has and the others fill the rest, so a
    mix dominated by one domain (the shared data is half safety) does not teach only that domain.
    Only the domains are read, so an Arrow table is sampled without loading its rows.
    """
    import random

    rng = random.Random(seed)
    by_domain: dict[str, list[int]] = {}
    for index, domain in enumerate(domains):
        by_domain.setdefault(domain or "", []).append(index)
    for rows in by_domain.values():
        rng.shuffle(rows)
    target = min(n, len(domains))
    chosen: list[int] = []
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


# The direction of a pair's length cue: is the chosen response the longer one (in characters)?
CHOSEN_LONGER, CHOSEN_SHORTER, EQUAL_LENGTH = 1, -1, 0


def length_direction(chosen: str, rejected: str) -> int:
    """``CHOSEN_LONGER``, ``CHOSEN_SHORTER`` or ``EQUAL_LENGTH``, counting characters as the length
    heuristic does."""
    return (len(chosen) > len(rejected)) - (len(chosen) < len(rejected))


def length_balanced_indices(domains: Sequence[str | None], directions: Sequence[int], n: int,
                            seed: int) -> list[int]:
    """Row indices in which, within every domain, the chosen response is the longer one in exactly
    half of the pairs: ``--length-balance``.

    Each domain's chosen-longer and chosen-shorter rows are shuffled (seeded) and zipped into
    couples, and its pairs of equal length (no length cue; 2.4% of the shared data, mostly DebugBench
    bugs that keep the line length) into couples of their own; the majority side's surplus (and an odd
    equal-length pair) is left out. ``n`` > 0 keeps ``n // 2`` couples with an equal share per domain
    (``stratified_indices`` over couples). The result lists each couple's two rows next to each other
    (longer first), so a sampler that keeps groups of two pairs together draws balanced batches too.
    """
    import random

    if n == 1:  # n // 2 = 0 couples: nothing to train on, whatever the data
        raise ValueError("--max-pairs 1 with --length-balance: pairs are kept in couples (one whose chosen response "
                         "is the longer, one whose is the shorter), so ask for at least 2, or pass --no-length-balance")

    rng = random.Random(seed)
    cells: dict[tuple[str, int], list[int]] = {}
    for index, (domain, direction) in enumerate(zip(domains, directions, strict=True)):
        cells.setdefault((domain or "", direction), []).append(index)
    couples: list[tuple[int, int]] = []
    couple_domains: list[str] = []
    for domain in sorted({domain for domain, _ in cells}):
        longer, shorter, equal = (cells.get((domain, d), []) for d in (CHOSEN_LONGER, CHOSEN_SHORTER, EQUAL_LENGTH))
        for rows in (longer, shorter, equal):
            rng.shuffle(rows)
        kept = list(zip(longer, shorter, strict=False)) + list(zip(equal[0::2], equal[1::2], strict=False))
        couples.extend(kept)
        couple_domains.extend([domain] * len(kept))
    if n and n // 2 < len(couples):
        couples = [couples[i] for i in stratified_indices(couple_domains, n // 2, seed)]
    else:
        rng.shuffle(couples)
    return [index for couple in couples for index in couple]
