"""Training data as memory-mapped Arrow tables (``datasets``), cached on disk under fingerprints.

The cache folder (``TrainConfig.cache_dir``, else ``$TINYRM_DATASETS_CACHE``, else
``$XDG_CACHE_HOME/tinyrm/datasets`` or ``~/.cache/tinyrm/datasets``) holds two kinds of file:

* ``pairs-<fp>.arrow`` and ``pairs-<fp>.json``: the validated preference pairs of a list of
  sources, streamed from the JSONL files once (the same ``path:line: reason`` errors as
  :func:`tinyrm.data.load_pairs`) and the load report (row counts, skipped rows). ``fp`` hashes
  the format version, ``skip_bad_rows`` and, per source, its resolved path, size and mtime (a
  ``hub:`` source: its ``datasets`` fingerprint), so touching a file rebuilds it.
* ``<kind>-<fp>.arrow``: those pairs (or a seeded sample of them) encoded by one objective
  (``Dataset.map``, batched), ``fp`` adding every setting that changes the encoded rows: the
  tokenizer (path and content hash), template, prefixes, ``max_length``, order, ...

A run whose files and settings match reuses both without reading a JSONL line or calling the
tokenizer; the Trainer then reads rows by index from the memory-mapped tables, so a run holds no
Python list of its examples. Files are written under a temporary name and renamed, so processes
sharing the folder (DDP ranks) never read a partial file. With caching off (``--no-cache``) the
same files go to a temporary folder, removed with the last table that uses it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .data import (
    HUB_PREFIX,
    DataError,
    LoadReport,
    PreferencePair,
    expand_sources,
    iter_pairs,
    length_balanced_indices,
    load_hub_dataset,
    no_valid_rows,
    stratified_indices,
)
from .errors import not_a_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the layout of any cached table changes
CACHE_ENV = "TINYRM_DATASETS_CACHE"
PAIR_FIELDS = tuple(f.name for f in fields(PreferencePair))
WRITE_BATCH = 1000


def default_cache_dir() -> Path:
    """``$TINYRM_DATASETS_CACHE``, else ``$XDG_CACHE_HOME/tinyrm/datasets`` (``~/.cache`` by default)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinyrm" / "datasets"


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir`` or :func:`default_cache_dir`, created if needed."""
    path = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


class TemporaryCacheDir:
    """A cache folder for one run (``--no-cache``), removed once this object is garbage (the tables
    using the folder hold it as ``keepalive``) or at exit."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="tinyrm-data-"))
        self._remove = weakref.finalize(self, shutil.rmtree, str(self.path), True)


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able ``parts`` (a valid ``datasets`` fingerprint)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def source_signature(source: str, load_hub: Callable[[str], Any] = load_hub_dataset) -> list:
    """What identifies a source's content: resolved path, size and mtime, and the name it is given by,
    since rows without a subset take the file's stem (hub: the fingerprint of the dataset ``load_hub``
    returns)."""
    if source.startswith(HUB_PREFIX):
        return [source, load_hub(source)._fingerprint]
    path = Path(source)
    if not path.is_file():
        raise DataError(not_a_file(path))
    stat = path.stat()
    return [str(path.resolve()), path.name, stat.st_size, stat.st_mtime_ns]


def tokenizer_signature(tokenizer) -> list:
    """The tokenizer's class, path, a hash of its full definition and a probe encoding."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    probe = tokenizer("Probe: a question?", "An answer, 42.")
    return [type(tokenizer).__name__, str(getattr(tokenizer, "name_or_path", "")),
            hashlib.sha256(body.encode("utf-8")).hexdigest(), list(probe["input_ids"]),
            list(probe.get("token_type_ids") or [])]


def has_token_types(tokenizer) -> bool:
    """Whether the tokenizer's pair encodings carry ``token_type_ids`` (as the encoders' probes read it)."""
    return tokenizer("a", "b").get("token_type_ids") is not None


def _batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_pairs_table(sources: Sequence[str], skip_bad_rows: bool, path: Path) -> LoadReport:
    """Stream the validated pairs of ``sources`` into the Arrow file ``path`` (written whole or not at all).

    The returned report has no ``pairs`` (they are in the file), only the counts.
    """
    import pyarrow as pa

    report = LoadReport(pairs=[])
    schema = pa.schema([(name, pa.string()) for name in PAIR_FIELDS])
    pairs = itertools.chain.from_iterable(iter_pairs(source, skip_bad_rows, report) for source in sources)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in _batches(pairs, WRITE_BATCH):
                columns = {name: [getattr(pair, name) for pair in batch] for name in PAIR_FIELDS}
                writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=schema))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return report


@dataclass
class PairTable:
    """Validated preference pairs as a ``datasets.Dataset`` (columns: the ``PreferencePair`` fields).

    ``cache_dir`` None: an in-memory table (built from Python pairs), encoded in memory too.
    ``keepalive``: a temporary cache folder (:class:`TemporaryCacheDir`) that this table, its
    samples and the datasets encoded from it hold, so it lives as long as they do.
    """

    dataset: Any
    fingerprint: str
    cache_dir: Path | None = None
    skipped: int = 0
    per_file: dict[str, int] = field(default_factory=dict)
    keepalive: Any = None

    @classmethod
    def from_pairs(cls, pairs: Sequence[PreferencePair]) -> PairTable:
        import datasets

        columns = {name: [getattr(pair, name) for pair in pairs] for name in PAIR_FIELDS}
        features = datasets.Features({name: datasets.Value("string") for name in PAIR_FIELDS})
        return cls(datasets.Dataset.from_dict(columns, features=features), uuid.uuid4().hex)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def pairs(self) -> list[PreferencePair]:
        """The rows as ``PreferencePair`` objects (materialised: for small tables and tests)."""
        return [PreferencePair(**row) for row in self.dataset]

    def sample(self, n: int, seed: int) -> PairTable:
        """``n`` pairs with an equal share per domain (``stratified_indices``: the same sample as
        ``stratified_sample`` of the same rows), or the whole table when ``n`` is 0 or not smaller."""
        if not n or n >= len(self):
            return self
        indices = stratified_indices(list(self.dataset["domain"]), n, seed)
        return replace(self, dataset=self.dataset.select(indices, keep_in_memory=True),
                       fingerprint=fingerprint(self.fingerprint, "sample", n, seed))

    def length_balanced(self, n: int, seed: int) -> PairTable:
        """``length_balanced_indices`` of this table: chosen longer in half of each domain's pairs, the
        rows in couples (one of each direction); ``n`` 0 keeps every couple."""
        import pyarrow.compute as pc

        data = self.dataset.data
        chosen, rejected = (pc.utf8_length(data.column(name)).to_pylist() for name in ("chosen", "rejected"))
        directions = [(c > r) - (c < r) for c, r in zip(chosen, rejected, strict=True)]
        indices = length_balanced_indices(list(self.dataset["domain"]), directions, n, seed)
        if not indices:
            longer = sum(d > 0 for d in directions)
            raise DataError(f"--length-balance: no pair left to train on (of {len(directions)} pairs, the chosen "
                            f"response is the longer one in {longer}, the shorter one in "
                            f"{sum(d < 0 for d in directions)}; balancing keeps as many of each per domain). "
                            "Train on data with both, or pass --no-length-balance")
        print(f"length balance: {len(indices)} of {len(directions)} pairs (per domain, the chosen response is the "
              "longer one in as many pairs as the shorter one)")
        return replace(self, dataset=self.dataset.select(indices, keep_in_memory=True),
                       fingerprint=fingerprint(self.fingerprint, "length-balanced", n, seed))

    def encode(self, kind: str, function: Callable[[dict, list[int]], dict], features, settings: dict,
               desc: str | None = None):
        """``Dataset.map(function, batched=True, with_indices=True)`` into ``features``, cached as
        ``<kind>-<fp>.arrow`` where ``fp`` covers this table and ``settings`` (every input of
        ``function`` that changes its rows). A cached file is loaded without calling ``function``."""
        fp = fingerprint(FORMAT_VERSION, kind, self.fingerprint, settings)
        common = dict(batched=True, with_indices=True, remove_columns=self.dataset.column_names,
                      features=features, new_fingerprint=fp, desc=desc)
        if self.cache_dir is None:
            return self.dataset.map(function, keep_in_memory=True, **common)
        path = self.cache_dir / f"{kind}-{fp}.arrow"
        if path.is_file():
            logger.info("%s: reusing the encoded table %s", kind, path)
        return self.dataset.map(function, cache_file_name=str(path), load_from_cache_file=True, **common)


def load_pair_table(sources: Sequence[str], skip_bad_rows: bool = False,
                    cache_dir: Path | None = None) -> PairTable:
    """The pairs of ``sources`` (JSONL files, globs, ``hub:`` specs) as a memory-mapped table in
    ``cache_dir``, built on the first call and reused while the files and ``skip_bad_rows`` stay
    the same. ``cache_dir`` None: read into memory (``load_pairs``), nothing written."""
    import datasets

    from .data import load_pairs

    if not sources:
        raise DataError("no data given (pass --data FILE...)")
    if cache_dir is None:
        report = load_pairs(sources, skip_bad_rows=skip_bad_rows)
        return replace(PairTable.from_pairs(report.pairs), skipped=report.skipped, per_file=report.per_file)
    expanded = expand_sources(sources)
    fp = fingerprint(FORMAT_VERSION, "pairs", [source_signature(s) for s in expanded], skip_bad_rows)
    arrow, meta_path = cache_dir / f"pairs-{fp}.arrow", cache_dir / f"pairs-{fp}.json"
    if arrow.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        for location, reason in meta["skipped_rows"]:
            logger.warning("%s: skipped: %s", location, reason)  # as when the files were read
        logger.info("reusing the pairs table %s", arrow)
    else:
        report = write_pairs_table(expanded, skip_bad_rows, arrow)
        meta = {"format": FORMAT_VERSION, "sources": expanded, "skip_bad_rows": skip_bad_rows,
                "skipped": report.skipped, "skipped_rows": report.skipped_rows, "per_file": report.per_file}
        _write_atomic_text(meta_path, json.dumps(meta, indent=1) + "\n")  # written last: the table is complete
    if meta["skipped"]:
        logger.warning("skipped %d malformed row(s)", meta["skipped"])
    if not sum(meta["per_file"].values()):  # as load_pairs: nothing to train on
        raise no_valid_rows(sources, "pairs", meta["skipped"])
    dataset = datasets.Dataset.from_file(str(arrow))
    return PairTable(dataset, fp, cache_dir, skipped=meta["skipped"], per_file=meta["per_file"])
