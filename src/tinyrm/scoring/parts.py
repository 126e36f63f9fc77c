"""``OUT.parts/``: what a scoring job has finished, so a killed run continues where it stopped.

The folder holds ``job.json`` (the job's fingerprint: model, input files with their sizes and
mtimes, chunk size, filters, output format) and, for every finished chunk N, ``part-N.parquet`` (or
``.jsonl``) with its kept rows and ``part-N.json`` with its counts. Both are written under a temporary
name and renamed, the counts last: a chunk is finished exactly when its ``part-N.json`` exists, so a
kill at any moment leaves either a finished chunk or none (a part without counts is done again).

A run started with the same arguments on the same input finds the same fingerprint and skips the
finished chunks; any other fingerprint means another job, whose folder is removed first. When every
chunk is finished the parts are joined into ``OUT`` and the folder is removed.

The folder is built under a temporary sibling name (``OUT.parts.PID.HEX.tmp``) and renamed into place
once ``job.json`` is in it, and is renamed to such a name before it is deleted, so a kill never leaves
an ``OUT.parts/`` without ``job.json`` (which would block every later run); a temporary folder left by a
killed run is deleted by the next.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .config import SHOWN_SKIPPED
from .writers import check_cast, check_schema, join_parts, temporary_name, write_atomic

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
JOB_FILE = "job.json"


def parts_dir(output: str | Path) -> Path:
    return Path(f"{output}.parts")


def remove_dir(path: Path) -> None:
    """Delete ``path``: renamed away first, so a kill while deleting leaves no half-deleted ``path``."""
    if not path.exists():
        return
    doomed = temporary_name(path)
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_leftovers(path: Path) -> None:
    """Delete the temporary folders (``temporary_name(path)``) that killed runs left beside ``path``."""
    own = re.compile(rf"{re.escape(path.name)}\.\d+\.[0-9a-f]{{8}}\.tmp")  # not another output's folder
    for leftover in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        if own.fullmatch(leftover.name) and leftover.is_dir():
            logger.info("removing %s, left by a killed run", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def output_lock(output: str | Path) -> Iterator[None]:
    """Hold ``OUT.lock`` for a run; a second run on the same output raises a UsageError at once."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): one run per output is left to the user
        yield
        return
    path = Path(f"{output}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            handle.close()
            raise UsageError(f"another `tinyrm score` (pid {owner}) is writing --output {output} ({path} is "
                             "locked): wait for it to end or choose another --output") from None
        try:
            current = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        handle.close()  # a run that just ended removed the file we locked: lock the new one
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # removed while still locked, so no run can lock a stale file
        handle.close()


class PartStore:
    """The resume state of one job (see the module docstring)."""

    def __init__(self, output: Path, fmt: str, fingerprint: str, chunks: int) -> None:
        self.output = Path(output)
        self.dir = parts_dir(output)
        self.fmt = fmt
        self.fingerprint = fingerprint
        self.chunks = chunks
        self.counts: dict[int, dict[str, Any]] = {}
        self._schema = None
        self.resumed = 0

    @classmethod
    def open(cls, output: str | Path, fmt: str, fingerprint: str, chunks: int, job: dict[str, Any]) -> PartStore:
        """The job's folder: resumed when its fingerprint matches, else started afresh."""
        store = cls(Path(output), fmt, fingerprint, chunks)
        job_file = store.dir / JOB_FILE
        remove_leftovers(store.dir)
        if store.dir.exists():
            if not job_file.is_file():
                raise UsageError(f"{store.dir} exists and is not the state folder of a `tinyrm score` run; "
                                 "move it away or choose another --output")
            try:
                saved = json.loads(job_file.read_text(encoding="utf-8")).get("fingerprint")
            except (OSError, ValueError):
                saved = None
            if saved == fingerprint:
                store._load()
                store.resumed = len(store.counts)
                return store
            logger.warning("%s holds a run with other arguments or other input: starting afresh", store.dir)
            remove_dir(store.dir)
        building = temporary_name(store.dir)  # renamed into place once job.json is in it
        building.mkdir(parents=True)
        document = {"format": STATE_FORMAT, "fingerprint": fingerprint, "chunks": chunks, "job": job}
        write_atomic(building / JOB_FILE, (json.dumps(document, indent=1, default=str) + "\n").encode("utf-8"))
        os.rename(building, store.dir)
        return store

    def part(self, chunk: int) -> Path:
        return self.dir / f"part-{chunk:06d}.{self.fmt}"

    def _counts_file(self, chunk: int) -> Path:
        return self.dir / f"part-{chunk:06d}.json"

    def _load(self) -> None:
        for path in self.dir.glob("part-*.json"):
            chunk = int(path.stem.split("-", 1)[1])
            if chunk < self.chunks and self.part(chunk).is_file():
                self.counts[chunk] = json.loads(path.read_text(encoding="utf-8"))

    def done(self) -> set[int]:
        return set(self.counts)

    def commit(self, chunk: int, data: bytes, counts: dict[str, Any]) -> None:
        """Keep a finished chunk: its part, then its counts (the commit point)."""
        part = self.part(chunk)
        write_atomic(part, data)
        if self.fmt == "parquet":  # a column whose type no longer joins stops the run here, not at the join
            self._check_joins(chunk)
        write_atomic(self._counts_file(chunk), (json.dumps(counts) + "\n").encode("utf-8"))
        self.counts[chunk] = counts

    def _check_joins(self, chunk: int) -> None:
        """Unify the new part's schema with the finished parts' and cast what the join will cast: the new
        part's columns, and the finished parts' columns whose unified type this part changed."""
        if self._schema is None:
            for done in sorted(self.counts):
                self._schema = check_schema(self._schema, self.part(done), done)
        before = self._schema
        schema = check_schema(before, self.part(chunk), chunk)
        check_cast(self.part(chunk), schema, f"chunk {chunk}: ")
        changed = [] if before is None else [f.name for f in before if schema.field(f.name).type != f.type]
        if changed:
            for done in sorted(self.counts):
                check_cast(self.part(done), schema, f"chunk {chunk}: chunk {done}'s ", changed)
        self._schema = schema

    def complete(self) -> bool:
        return len(self.counts) == self.chunks

    def totals(self) -> dict[str, Any]:
        """The counts of every finished chunk added up; ``skipped_rows``: the first ``SHOWN_SKIPPED``."""
        totals: dict[str, Any] = {}
        skipped: list[list[str]] = []
        for chunk in sorted(self.counts):
            for key, value in self.counts[chunk].items():
                if key == "skipped_rows":
                    skipped.extend(value[: SHOWN_SKIPPED - len(skipped)])
                elif isinstance(value, (int, float)):
                    totals[key] = totals.get(key, 0) + value
        totals["skipped_rows"] = skipped
        return totals

    def finish(self) -> None:
        """Join the parts into the output and remove the folder (every chunk must be finished)."""
        missing = [chunk for chunk in range(self.chunks) if chunk not in self.counts]
        if missing:
            raise RuntimeError(f"chunks {missing[:10]} are not finished")
        join_parts([self.part(chunk) for chunk in range(self.chunks)], self.output, self.fmt)

    def remove(self) -> None:
        remove_dir(self.dir)
