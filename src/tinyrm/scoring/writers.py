"""Writing a scoring job's output: one part file per chunk, then the parts joined into ``OUT``.

- ``encode_part``: a chunk's rows as the bytes of a Parquet file or of JSONL lines. Decoded JSON rows
  become a table with every key any row has (in first-seen order, nulls where a row lacks one); Arrow
  rows keep their types.
- ``join_parts``: the parts, in chunk order, into ``OUT`` under a temporary name renamed at the end.
  JSONL parts are concatenated; Parquet parts are written with one schema, the union of theirs
  (``pyarrow.unify_schemas``, permissive: a column missing from a part is null there, an all-null
  column takes the type the others have, int widens to float), one part in memory at a time.
- ``check_schema`` and ``check_cast``: whether a new part's schema still joins the others, and whether
  the values the join will cast fit the joined type (an int above 2^53 does not fit a float), so a
  column whose values change type between chunks stops the run at that chunk, not after the last one.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import DataError

if TYPE_CHECKING:
    import pyarrow as pa


def temporary_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` whole or not at all (a temporary file, fsync'd, renamed over it)."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_default(value: Any) -> Any:
    """What JSON has no type for (bytes, dates, decimals from Parquet input) is written as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def records_table(records: Sequence[dict]) -> pa.Table:
    """Decoded JSON rows as a pyarrow Table: every key of any row, in first-seen order."""
    import pyarrow as pa

    names = list(dict.fromkeys(key for record in records for key in record))
    columns = {}
    for name in names:
        try:
            columns[name] = pa.array([record.get(name) for record in records])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise DataError(f"column {name!r} holds values of different types in one chunk ({error}); Parquet "
                            "needs one type per column: write JSONL output (OUT ending in .jsonl)") from None
        except OverflowError:  # an integer beyond 64 bits
            raise DataError(f"column {name!r} holds an integer too large for Parquet (64 bits): write JSONL "
                            "output (OUT ending in .jsonl)") from None
    return pa.table(columns) if columns else pa.table({})


def encode_part(fmt: str, records: Sequence[dict] | None = None, table: pa.Table | None = None) -> bytes:
    """One chunk's rows (``records`` or a pyarrow ``table``) as the bytes of its part file."""
    if fmt == "jsonl":
        rows = records if records is not None else table.to_pylist()
        return "".join(json.dumps(row, default=_json_default) + "\n" for row in rows).encode("utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    if records is not None:
        table = records_table(records)
    sink = io.BytesIO()
    try:
        pq.write_table(table, sink)
    except pa.ArrowNotImplementedError as error:  # e.g. an empty JSON object: a struct without fields
        message = " ".join(str(error).split())
        raise DataError(f"a column has a type Parquet cannot store ({message}): write JSONL output (OUT ending in "
                        ".jsonl)") from None
    return sink.getvalue()


def unify(schemas: Sequence[pa.Schema], where: str = "") -> pa.Schema:
    """The schema every part is written with (``DataError`` naming the column that does not join)."""
    import pyarrow as pa

    try:
        return pa.unify_schemas(list(schemas), promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        raise DataError(f"{where}a column's values have a type that does not join the other chunks' ({error}); "
                        "write JSONL output (OUT ending in .jsonl), or give the column one type") from None


def check_schema(current: pa.Schema | None, part: Path, chunk: int) -> pa.Schema:
    """``current`` (None at first) unified with the schema of the Parquet part ``part``."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(part)
    return schema if current is None else unify([current, schema], f"chunk {chunk}: ")


def _cast(column: pa.ChunkedArray, field: pa.Field, where: str) -> pa.ChunkedArray:
    """``column`` as ``field``'s type; ``DataError`` naming the column where a value does not fit."""
    import pyarrow as pa

    if column.type == field.type:
        return column
    try:
        return column.cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        raise DataError(f"{where}column {field.name!r}: values of type {column.type} do not fit {field.type}, the "
                        f"type the chunks join to ({error}); write JSONL output (OUT ending in .jsonl), or give the "
                        "column one type") from None


def check_cast(part: Path, schema: pa.Schema, where: str = "", names: Sequence[str] | None = None) -> None:
    """Cast the Parquet part's columns (only ``names`` if given) to ``schema``'s types as the join will,
    reading only those whose type differs: ``DataError`` for a value that does not fit."""
    import pyarrow.parquet as pq

    own = pq.read_schema(part)
    fields = [f for f in schema if f.name in own.names and (names is None or f.name in names)
              and own.field(f.name).type != f.type]
    if fields:
        table = pq.read_table(part, columns=[f.name for f in fields])
        for f in fields:
            _cast(table.column(f.name), f, where)


def _conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    import pyarrow as pa

    columns = [_cast(table.column(f.name), f, where) if f.name in table.column_names
               else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def join_parts(parts: Sequence[Path], output: Path, fmt: str) -> None:
    """The parts, in the order given, into ``output`` (written under a temporary name, then renamed)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(output)
    try:
        if fmt == "jsonl":
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(part, "rb") as handle:
                        while block := handle.read(1 << 20):
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
        else:
            _join_parquet(parts, tmp)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def _join_parquet(parts: Sequence[Path], tmp: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = [pq.read_schema(part) for part in parts]
    schema = unify(schemas) if schemas else pa.schema([])
    with pq.ParquetWriter(str(tmp), schema) as writer:
        for part in parts:
            table = pq.read_table(part)
            if table.num_rows:
                writer.write_table(_conform(table, schema, f"{part}: "))
        if not parts:
            writer.write_table(schema.empty_table())
