"""Reading a scoring job's input in numbered chunks, streamed, from JSONL, Parquet or ``hub:NAME[:SPLIT]``.

``plan_chunks`` looks at every source once without holding its rows (JSONL: one pass over the lines
noting where every ``chunk_rows``-th non-blank line starts; Parquet: the row-group sizes in the footer;
hub: the length) and cuts the input into **units**, each read from its start on its own:

- JSONL: one unit per chunk, from a byte offset (so a resumed run or a Ray worker seeks straight to it);
- Parquet: consecutive row groups up to ``chunk_rows`` rows, or one larger row group that is read as a
  stream of chunks (never a whole large row group per chunk);
- hub: one unit per chunk, a slice of the memory-mapped table.

Chunks are numbered in input order across all sources, and the same arguments always give the same
chunks: that is what makes a resumed run write the same output. ``read_unit`` yields a unit's chunks
(only the ``wanted`` ones are checked), each with its rows checked by :func:`tinyrm.scoring.rows.parse_row`:
a bad row raises ``DataError`` with ``path:line: reason`` (Parquet and hub: ``path:row N``, from 0) or,
with ``skip_bad_rows``, is logged, left out and listed in the chunk's ``skipped``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..arrow import source_signature as arrow_source_signature
from ..data import HUB_PREFIX, DataError, expand_sources, jsonl_lines, load_hub_dataset, parse_json_line
from .rows import ROW_FIELDS, ScoreRow, parse_row

logger = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")
_HUB_DATASETS: dict[str, Any] = {}  # spec -> datasets.Dataset, loaded once per process


@dataclass(frozen=True)
class Unit:
    """A run of input rows read from its start on its own; it holds chunks ``first_chunk ...``."""

    source: str
    kind: str  # jsonl | parquet | hub
    first_chunk: int
    rows: int  # input rows (non-blank lines for JSONL), bad ones included
    start: int  # jsonl: byte offset; parquet, hub: the first row's index in the source
    first_line: int = 0  # jsonl: the line number at ``start``
    row_groups: tuple[int, ...] = ()  # parquet

    def chunk_ids(self, chunk_rows: int) -> range:
        return range(self.first_chunk, self.first_chunk + math.ceil(self.rows / chunk_rows))


@dataclass
class Plan:
    units: list[Unit]
    chunks: int
    rows: int
    chunk_rows: int
    sources: list[str] = field(default_factory=list)


@dataclass
class Chunk:
    """One chunk's rows after the checks: ``records`` (JSONL rows as decoded) or ``table`` (Arrow)."""

    id: int
    rows: int  # input rows, bad ones included
    items: list[ScoreRow]  # one per row kept, in order
    records: list[dict] | None = None
    table: Any = None  # pyarrow.Table
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (location, reason)


def source_kind(source: str) -> str:
    if source.startswith(HUB_PREFIX):
        return "hub"
    return "parquet" if source.lower().endswith(PARQUET_SUFFIXES) else "jsonl"


def hub_dataset(spec: str) -> Any:
    """The dataset of ``hub:NAME[:SPLIT]`` (no required columns: the rows' kinds are checked per row)."""
    if spec not in _HUB_DATASETS:
        _HUB_DATASETS[spec] = load_hub_dataset(spec, required=())
    return _HUB_DATASETS[spec]


def source_signature(source: str) -> list:
    """``tinyrm.arrow.source_signature``, with hub datasets loaded as scoring loads them (no required columns)."""
    return arrow_source_signature(source, load_hub=hub_dataset)


def plan_chunks(sources: Sequence[str], chunk_rows: int) -> Plan:
    """The units and chunks of ``sources`` (files, globs, ``hub:`` specs), in order."""
    expanded = expand_sources(sources)
    units: list[Unit] = []
    chunks = rows = 0
    for source in expanded:
        kind = source_kind(source)
        planner = {"jsonl": _plan_jsonl, "parquet": _plan_parquet, "hub": _plan_hub}[kind]
        for unit in planner(source, chunk_rows, chunks):
            units.append(unit)
            chunks += len(unit.chunk_ids(chunk_rows))
            rows += unit.rows
    return Plan(units, chunks, rows, chunk_rows, expanded)


def _plan_jsonl(path: str, chunk_rows: int, first_chunk: int) -> Iterator[Unit]:
    starts: list[tuple[int, int]] = []  # (byte offset, line number) of every chunk's first row
    count = 0
    for line_no, offset, _ in jsonl_lines(path):
        if count % chunk_rows == 0:
            starts.append((offset, line_no))
        count += 1
    for k, (start, line) in enumerate(starts):
        yield Unit(path, "jsonl", first_chunk + k, min(chunk_rows, count - k * chunk_rows), start, line)


def _plan_parquet(path: str, chunk_rows: int, first_chunk: int) -> Iterator[Unit]:
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    try:
        metadata = pq.ParquetFile(path).metadata
        names = metadata.schema.to_arrow_schema().names
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
        raise DataError(f"{path}: not a Parquet file ({' '.join(str(error).split())})") from None
    if not metadata.num_rows:
        raise DataError(f"{path}: no rows (the Parquet file holds none)")
    for name in dict.fromkeys(names):
        if names.count(name) > 1:
            raise DataError(f"{path}: column {name!r} appears {names.count(name)} times")
    groups: list[int] = []
    rows = start = row = 0
    chunk = first_chunk

    def unit() -> Unit:
        return Unit(path, "parquet", chunk, rows, start, row_groups=tuple(groups))

    for index in range(metadata.num_row_groups):
        n = metadata.row_group(index).num_rows
        if groups and rows + n > chunk_rows:
            done = unit()
            yield done
            chunk += len(done.chunk_ids(chunk_rows))
            groups, rows, start = [], 0, row
        groups.append(index)
        rows += n
        row += n
    if groups and rows:
        yield unit()


def _plan_hub(spec: str, chunk_rows: int, first_chunk: int) -> Iterator[Unit]:
    total = len(hub_dataset(spec))
    if not total:
        raise DataError(f"{spec}: no rows (the dataset is empty)")
    for k, start in enumerate(range(0, total, chunk_rows)):
        yield Unit(spec, "hub", first_chunk + k, min(chunk_rows, total - start), start)


def read_unit(unit: Unit, chunk_rows: int, skip_bad_rows: bool,
              wanted: Container[int] | None = None) -> Iterator[Chunk]:
    """The unit's chunks in order, those in ``wanted`` (default: all); the others are read past unchecked."""
    if unit.kind == "jsonl":
        if wanted is None or unit.first_chunk in wanted:
            yield _jsonl_chunk(unit, skip_bad_rows)
        return
    for index, table in enumerate(_arrow_tables(unit, chunk_rows)):
        chunk_id = unit.first_chunk + index
        if wanted is None or chunk_id in wanted:
            yield _arrow_chunk(chunk_id, table, unit.source, unit.start + index * chunk_rows, skip_bad_rows)


def _bad_row(location: str, reason: str, skip_bad_rows: bool, skipped: list[tuple[str, str]]) -> None:
    if not skip_bad_rows:
        raise DataError(f"{location}: {reason}")
    logger.warning("%s: skipped: %s", location, reason)
    skipped.append((location, reason))


def _jsonl_chunk(unit: Unit, skip_bad_rows: bool) -> Chunk:
    records: list[dict] = []
    items: list[ScoreRow] = []
    skipped: list[tuple[str, str]] = []
    seen = 0
    for line_no, _, raw in jsonl_lines(unit.source, unit.start, unit.first_line):
        seen += 1
        try:
            record = parse_json_line(raw)
            item = parse_row(record)
        except ValueError as error:
            _bad_row(f"{unit.source}:{line_no}", str(error), skip_bad_rows, skipped)
        else:
            records.append(record)
            items.append(item)
        if seen == unit.rows:
            break
    if seen != unit.rows:
        raise DataError(f"{unit.source}: the file changed while it was read (expected {unit.rows} more rows "
                        f"from line {unit.first_line})")
    return Chunk(unit.first_chunk, seen, items, records=records, skipped=skipped)


def _arrow_tables(unit: Unit, chunk_rows: int) -> Iterator[Any]:
    """The unit's rows as pyarrow Tables of exactly ``chunk_rows`` rows (the last one: the rest)."""
    import pyarrow as pa

    if unit.kind == "hub":
        yield hub_dataset(unit.source).with_format("arrow")[unit.start: unit.start + unit.rows]
        return
    import pyarrow.parquet as pq

    batches = pq.ParquetFile(unit.source).iter_batches(batch_size=chunk_rows, row_groups=list(unit.row_groups))
    pending: list[Any] = []
    size = 0
    for batch in _readable(batches, unit):
        while batch.num_rows:
            take = min(chunk_rows - size, batch.num_rows)
            pending.append(batch.slice(0, take))
            batch = batch.slice(take)
            size += take
            if size == chunk_rows:
                yield pa.Table.from_batches(pending)
                pending, size = [], 0
    if size:
        yield pa.Table.from_batches(pending)


def _readable(batches: Iterator[Any], unit: Unit) -> Iterator[Any]:
    """``batches``, with a read error (a damaged page) raised as ``DataError`` naming the file."""
    import pyarrow as pa

    try:
        yield from batches
    except (OSError, pa.ArrowException) as error:
        groups = f"{unit.row_groups[0]}-{unit.row_groups[-1]}" if unit.row_groups else "?"
        message = " ".join(str(error).split())
        raise DataError(f"{unit.source}: cannot read row group(s) {groups} ({message})") from None


def _not_text(table: Any) -> dict[int, str]:
    """Row index -> the first column whose value there is not valid (a string that is not UTF-8: Parquet
    writers other than pyarrow may not check), found by Arrow's full validation."""
    import pyarrow as pa

    bad: dict[int, str] = {}
    for name, column in zip(table.column_names, table.columns):
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            for index in range(len(column)):
                try:
                    column.slice(index, 1).validate(full=True)
                except pa.ArrowInvalid:
                    bad.setdefault(index, name)
    return bad


def _arrow_chunk(chunk_id: int, table: Any, source: str, first_row: int, skip_bad_rows: bool) -> Chunk:
    bad = _not_text(table)
    columns = {name: [None if i in bad else value.as_py() for i, value in enumerate(table.column(name))]
               if bad else table.column(name).to_pylist() for name in ROW_FIELDS if name in table.column_names}
    items: list[ScoreRow] = []
    keep: list[int] = []
    skipped: list[tuple[str, str]] = []
    for index in range(table.num_rows):
        try:
            if index in bad:
                raise ValueError(f"field {bad[index]!r} is not UTF-8 text")
            items.append(parse_row({name: values[index] for name, values in columns.items()}))
            keep.append(index)
        except ValueError as error:
            _bad_row(f"{source}:row {first_row + index}", str(error), skip_bad_rows, skipped)
    if skipped:
        import pyarrow as pa

        table = table.take(pa.array(keep, type=pa.int64()))  # typed: an empty list would be of type null
    return Chunk(chunk_id, table.num_rows + len(skipped), items, table=table, skipped=skipped)
