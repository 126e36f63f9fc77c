"""``tinyrm score``'s readers fuzzed with Hypothesis (issue 22): generated JSONL files (``reader_fuzz_helpers``)
and Parquet tables (wrong column types, missing columns, nulls, nested lists and structs, strings that are
not UTF-8, duplicate columns, no rows, damaged bytes), read in chunks as ``tinyrm score`` reads them
(``plan_chunks`` and ``read_unit``, chunks of 1-4 rows across row groups of 1-4 rows), then written as a part
of both output formats (``encode_part``).

Each input loads, and then the rows are exactly the good ones (docs/scoring.md: a pair, an a/b pair or a
candidate set per row, every other field passed through), or raises one one-line ``DataError``:
``path:line: reason`` (Parquet: ``path:row N: reason``, N from 0) for the first bad row, ``path: reason`` for
a file that holds no rows or cannot be read. With ``skip_bad_rows`` the rows are exactly the good ones and
the skipped rows are listed where they are. Writing a part either works or raises one ``DataError``.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import event, given
from hypothesis import strategies as st

from tinyrm.data import DataError
from tinyrm.scoring.readers import plan_chunks, read_unit
from tinyrm.scoring.rows import AB, PAIR, ROW_FIELDS, SET, ScoreRow
from tinyrm.scoring.writers import encode_part

from .reader_fuzz_helpers import (
    BAD,
    NON_BLANK,
    STRING,
    TEXT,
    canon,
    check,
    expect_error,
    fuzz_settings,
    is_str,
    jsonl_files,
    oracle_lines,
    rows,
    written,
)

KINDS = {PAIR: ("chosen", "rejected"), AB: ("a", "b"), SET: ("candidates",)}


def expect_score(row: object) -> ScoreRow | None:
    """docs/scoring.md: a string prompt (may be empty) and the fields of exactly one kind (null counts as
    absent): chosen and rejected, or a and b (non-blank strings), or candidates (a non-empty list of
    strings). The domain, if not null, is read as text."""
    if not isinstance(row, dict) or not is_str(row.get("prompt")):
        return None
    kinds = [kind for kind, keys in KINDS.items() if any(row.get(key) is not None for key in keys)]
    if len(kinds) != 1:
        return None
    domain = None if row.get("domain") is None else str(row["domain"])
    if kinds[0] == SET:
        candidates = row["candidates"]
        if not isinstance(candidates, list) or not candidates or not all(is_str(c) for c in candidates):
            return None
        return ScoreRow(SET, row["prompt"], candidates=tuple(candidates), domain=domain)
    first, second = (row.get(key) for key in KINDS[kinds[0]])
    if not (is_str(first) and first.strip() and is_str(second) and second.strip()):
        return None
    return ScoreRow(kinds[0], row["prompt"], first, second, domain=domain)


def read_scoring(path: Path, chunk_rows: int, skip: bool) -> tuple[list, list[str]]:
    """Every chunk of ``path`` as ``tinyrm score`` reads it: ((row, passed-through fields) kept, skipped
    locations); each chunk is also written as a Parquet and a JSONL part."""
    plan = plan_chunks([str(path)], chunk_rows)
    kept: list = []
    skipped: list[str] = []
    rows_seen = 0
    for unit in plan.units:
        for chunk in read_unit(unit, chunk_rows, skip):
            rows_seen += chunk.rows
            records = chunk.records if chunk.records is not None else chunk.table.to_pylist()
            kept.extend(zip(chunk.items, map(canon, records), strict=True))
            skipped.extend(location for location, _ in chunk.skipped)
            for fmt in ("parquet", "jsonl"):
                try:
                    encode_part(fmt, records=chunk.records, table=chunk.table)
                except DataError as error:
                    assert "\n" not in str(error) and fmt == "parquet"
    assert rows_seen == plan.rows
    return kept, skipped


# ------------------------------------------------------------------------------------------------ JSONL

OPTIONAL = {"domain": st.one_of(st.none(), TEXT), "id": st.one_of(TEXT, st.integers())}
SCORE_ROWS = st.one_of(
    rows({"prompt": STRING, "chosen": NON_BLANK, "rejected": NON_BLANK}, OPTIONAL),
    rows({"prompt": STRING, "a": NON_BLANK, "b": NON_BLANK}, OPTIONAL),
    rows({"prompt": STRING, "candidates": st.lists(STRING, min_size=1, max_size=4)}, OPTIONAL),
    rows({"prompt": STRING, "chosen": NON_BLANK, "rejected": NON_BLANK, "candidates": st.lists(STRING, max_size=2)}),
)


@fuzz_settings(150)
@given(jsonl_files(SCORE_ROWS), st.integers(1, 4))
def test_score_jsonl_fuzz(file, chunk_rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = written(file.data, tmp)

        def expect(row: object, _: int) -> list | None:
            item = expect_score(row)
            return None if item is None else [(item, canon(row))]

        check(oracle_lines(file.data), path, lambda skip: read_scoring(path, chunk_rows, skip), expect,
              all_bad_is_error=False)


# ------------------------------------------------------------------------------------------------ Parquet

NOT_UTF8 = "not UTF-8"  # a string column whose bytes were written unchecked (pyarrow itself checks)
COLUMN_TYPES = {
    "string": (pa.string(), st.one_of(st.none(), STRING)),
    "large_string": (pa.large_string(), st.one_of(st.none(), NON_BLANK)),
    "dictionary": (pa.dictionary(pa.int32(), pa.string()), st.one_of(st.none(), NON_BLANK)),
    "int": (pa.int64(), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
    "float": (pa.float64(), st.one_of(st.none(), st.floats())),
    "bool": (pa.bool_(), st.one_of(st.none(), st.booleans())),
    "list<string>": (pa.list_(pa.string()), st.one_of(st.none(), st.lists(st.one_of(st.none(), STRING), max_size=3))),
    "list<int>": (pa.list_(pa.int64()), st.one_of(st.none(), st.lists(st.integers(-5, 5), max_size=3))),
    "struct": (pa.struct([("text", pa.string())]),
               st.one_of(st.none(), st.fixed_dictionaries({"text": st.one_of(st.none(), TEXT)}))),
    "null": (pa.null(), st.none()),
    "binary": (pa.binary(), st.one_of(st.none(), st.binary(max_size=4))),
    NOT_UTF8: (pa.string(), st.one_of(st.none(), NON_BLANK.map(str.encode), st.sampled_from([b"\xff", b"a\xc3"]))),
}
LAYOUTS = [["chosen", "rejected"], ["a", "b"], ["candidates"], ["chosen", "rejected", "candidates"],
           ["chosen", "rejected", "a", "b", "candidates"]]


def column(kind: str, values: list) -> pa.Array:
    kind_type, _ = COLUMN_TYPES[kind]
    if kind != NOT_UTF8:
        return pa.array(values, type=kind_type)
    raw = pa.array(values, type=pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers(), null_count=raw.null_count)


GOOD_VALUE = {"prompt": STRING, "chosen": NON_BLANK, "rejected": NON_BLANK, "a": NON_BLANK, "b": NON_BLANK,
              "candidates": st.lists(STRING, min_size=1, max_size=3)}


@st.composite
def parquet_tables(draw) -> tuple[list[tuple[str, str, list]], int]:
    """Columns ``(name, type, values)``: a prompt, the columns of one or several kinds (mostly of the right
    type, now and then any type), maybe a domain, an extra column, a second column of the same name. A
    cell of the right type mostly holds a good value for its row's kind (null in the other kinds' columns);
    in half of the tables always."""
    layout = draw(st.sampled_from(LAYOUTS))
    names = ["prompt", *layout,
             *draw(st.lists(st.sampled_from(["domain", "id", "extra", "note", "prompt"]), max_size=2, unique=True))]
    n = draw(st.sampled_from([3, 1, 2, 4, 5, 6, 0]))  # Hypothesis favours the first: few tables without rows
    kinds = [KINDS[kind] for kind in KINDS if set(KINDS[kind]) <= set(layout)]
    row_kinds = [draw(st.sampled_from(kinds)) for _ in range(n)]
    chaos = draw(st.booleans())  # False: right types and good cells (but the extra columns)
    columns = []
    for name in names:
        right = "list<string>" if name == "candidates" else "string"
        kind = draw(st.sampled_from(sorted(COLUMN_TYPES))) if chaos and draw(st.integers(0, 5)) == 5 else right
        values = []
        for row_kind in row_kinds:
            if kind == right and name in GOOD_VALUE and (not chaos or draw(st.integers(0, 7)) < 7):
                values.append(draw(GOOD_VALUE[name]) if name == "prompt" or name in row_kind else None)
            else:
                values.append(draw(COLUMN_TYPES[kind][1]))
        columns.append((name, kind, values))
    return columns, draw(st.integers(1, 4))


def oracle_rows(columns: list[tuple[str, str, list]]) -> list[tuple[int, object]]:
    """``(row index, the row's fields, or BAD for a string that is not UTF-8)``."""
    verdicts = []
    for index in range(len(columns[0][2])):
        row: dict = {}
        for name, kind, values in columns:
            value = values[index]
            if kind == NOT_UTF8 and value is not None:
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    row = BAD
                    break
            row[name] = value
        verdicts.append((index, row))
    return verdicts


@fuzz_settings(120)
@given(parquet_tables(), st.integers(1, 4))
def test_score_parquet_fuzz(table, chunk_rows):
    columns, row_group_size = table
    names = [name for name, _, _ in columns]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.parquet"
        pq.write_table(pa.Table.from_arrays([column(kind, values) for _, kind, values in columns], names=names),
                       path, row_group_size=row_group_size)
        duplicate = next((name for name in names if names.count(name) > 1), None)
        if columns[0][2] and duplicate:
            event("rows: a duplicate column")
            for skip in (False, True):
                expect_error(lambda: read_scoring(path, chunk_rows, skip), f"{path}: column {duplicate!r} appears")  # noqa: B023
            return

        def expect(row: object, _: int) -> list | None:
            item = expect_score({key: value for key, value in row.items() if key in ROW_FIELDS})
            return None if item is None else [(item, canon(row))]

        check(oracle_rows(columns), path, lambda skip: read_scoring(path, chunk_rows, skip), expect,
              all_bad_is_error=False, location=lambda index: f"{path}:row {index}")


@fuzz_settings(60)
@given(st.integers(0, 10**6), st.integers(1, 8), st.booleans(), st.binary(min_size=1, max_size=8))
def test_score_damaged_parquet_fuzz(seed, cut, truncate, noise):
    """A Parquet file cut short or with bytes overwritten: it reads, or fails with one ``DataError``."""
    sink = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["p", "q", "r"], "chosen": ["a", "bb", "c"], "rejected": ["x", "y", "zz"],
                             "candidates": pa.array([None, None, None], pa.list_(pa.string()))}), sink,
                   row_group_size=1)
    data = sink.getvalue()
    at = seed % len(data)
    data = data[: len(data) - cut * 64] if truncate else data[:at] + noise + data[at + len(noise):]
    with tempfile.TemporaryDirectory() as tmp:
        path = written(data, tmp, "damaged.parquet")
        for skip in (False, True):
            try:
                read_scoring(path, 2, skip)
                event("damaged Parquet: read")
            except DataError as error:
                event(f"damaged Parquet: {str(error)[len(str(path)) + 2:][:24]}")
                assert str(error).startswith(f"{path}:") and "\n" not in str(error), str(error)


def test_parquet_chunk_with_every_pair_dropped(tmp_path):
    """Found while fixing the reader's ``table.take([])`` (every row of a Parquet chunk skipped as bad): the
    same call dropping every pair of a chunk by ``--min-prob`` raised ArrowNotImplementedError (an empty list
    is of type null, which ``take`` has no kernel for)."""
    from tinyrm.scoring.chunk import score_chunk
    from tinyrm.scoring.config import ScoreConfig

    class Contradicts:
        def compare_batch(self, items, batch_size: int = 32, both_orders=None) -> list[float]:
            return [0.1] * len(items)

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["p", "q"], "chosen": ["a", "b"], "rejected": ["c", "d"]}), path)
    plan = plan_chunks([str(path)], 10)
    chunk = next(read_unit(plan.units[0], 10, False))
    for output in ("out.parquet", "out.jsonl"):
        result = score_chunk(Contradicts(), chunk, ScoreConfig(output=str(tmp_path / output), min_prob=0.5))
        assert (result.counts["kept_rows"], result.counts["dropped_rows"]) == (0, 2)
