"""Scoring one chunk: the model's judgements, the filters, the added columns, the part file's bytes.

Both engines call :func:`score_chunk` (the local one in its process, the Ray one in each actor), so a
chunk scored by either gives the same rows. What a chunk adds to its rows:

- a pair: ``prob_chosen`` (``prob_a`` for an a/b row), P(chosen better) from ``compare_batch`` (both
  orders averaged, as the model scores by default; a row's ``domain`` picks its prefix, as in
  ``tinyrm eval``); ``min_prob`` drops the chosen/rejected pairs whose ``prob_chosen`` is below it
  (a/b rows have no label to contradict and are kept);
- a candidate set: ``scores`` (one per candidate) and ``ranking`` (indices, best first), as
  ``tinyrm rank`` gives them; ``keep_best`` replaces ``candidates`` by ``best`` (the best candidate) and
  ``best_index`` (its index in the input set).

Every other column passes through. An input column named like an added one (say a pair row's own
``scores``) follows one rule in every chunk and both formats: a row whose kind adds the column holds the
added value, any other row keeps its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..data import DataError
from ..evaluation.evaluate import accepts_domains
from ..pairwise.rank import PairwiseScorer
from .config import SHOWN_SKIPPED, ScoreConfig, output_format
from .readers import Chunk
from .rows import AB, BEST, BEST_INDEX, PAIR, PROB_COLUMN, RANKING, SCORES, SET
from .sets import rank_sets
from .writers import encode_part

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)


@dataclass
class ChunkResult:
    id: int
    data: bytes  # the part file (Parquet or JSONL) holding the chunk's kept rows
    counts: dict[str, Any] = field(default_factory=dict)  # the ScoreResult counts, skipped_rows, seconds


def judge(model: PairwiseScorer, chunk: Chunk, config: ScoreConfig) -> list[dict[str, Any]]:
    """The columns to add to each of the chunk's rows (``{}`` for nothing; ``None`` marks a dropped row)."""
    pair_rows = [i for i, item in enumerate(chunk.items) if item.kind != SET]
    set_rows = [i for i, item in enumerate(chunk.items) if item.kind == SET]
    added: list[dict[str, Any]] = [{} for _ in chunk.items]
    if pair_rows:
        items = [(chunk.items[i].prompt, chunk.items[i].a, chunk.items[i].b) for i in pair_rows]
        # As `tinyrm eval` scores pairs: each pair's domain picks its prefix where the model has domain prefixes.
        extra = {"domains": [chunk.items[i].domain for i in pair_rows]} if accepts_domains(model) else {}
        for i, prob in zip(pair_rows, model.compare_batch(items, batch_size=config.batch_size, **extra)):
            added[i][PROB_COLUMN[chunk.items[i].kind]] = float(prob)
    sets = [(chunk.items[i].prompt, chunk.items[i].candidates) for i in set_rows]
    for i, (ranking, scores) in zip(set_rows, rank_sets(model, sets, config.method, config.batch_size)):
        added[i].update({SCORES: scores, RANKING: ranking})
        if config.keep_best:
            added[i].update({BEST: chunk.items[i].candidates[ranking[0]], BEST_INDEX: ranking[0]})
    return added


def fresh_token_cache(model: object) -> None:
    """Empty the model's token cache (``CachingClozeEncoder``, up to 50,000 texts, ~3.5 KB each for the shared
    data) before each chunk, so memory holds one chunk's texts whatever the input's size."""
    cache = getattr(getattr(model, "encoder", None), "_cache", None)
    if isinstance(cache, dict):
        cache.clear()


def score_chunk(model: PairwiseScorer, chunk: Chunk, config: ScoreConfig) -> ChunkResult:
    """Judge, filter and serialise one chunk (``output_format(config.output)``)."""
    started = time.perf_counter()
    fresh_token_cache(model)
    added = judge(model, chunk, config)
    kinds = [item.kind for item in chunk.items]
    keep = [not (kind == PAIR and config.min_prob is not None and extra["prob_chosen"] < config.min_prob)
            for kind, extra in zip(kinds, added)]
    kept = [i for i, k in enumerate(keep) if k]
    sizes = [len(item.candidates) for item in chunk.items if item.kind == SET]
    counts: dict[str, Any] = {
        "rows": chunk.rows, "pairs": kinds.count(PAIR), "ab_pairs": kinds.count(AB),
        "candidate_sets": len(sizes), "bad_rows": len(chunk.skipped), "kept_rows": len(kept),
        "dropped_rows": len(keep) - len(kept),
        "candidates_kept": len(sizes) if config.keep_best else sum(sizes),
        "candidates_dropped": sum(sizes) - len(sizes) if config.keep_best else 0,
        # Only what the summary shows: the rest would grow part-N.json, memory and Ray messages with the input.
        "skipped_rows": [list(entry) for entry in chunk.skipped[:SHOWN_SKIPPED]],
    }
    fmt = output_format(config.output)
    if chunk.records is not None:
        rows = []
        for i in kept:
            row = dict(chunk.records[i])
            row.update(added[i])  # the kind's columns only: a row keeps its own value of any other
            if config.keep_best:  # every row, so the column is absent from the whole output
                row.pop("candidates", None)
            rows.append(row)
        data = encode_part(fmt, records=rows)
    else:
        import pyarrow as pa

        kept_rows = pa.array(kept, type=pa.int64())  # typed: an empty list (every pair dropped) would be of type null
        table = chunk.table.take(kept_rows) if len(kept) < chunk.table.num_rows else chunk.table
        if config.keep_best and "candidates" in table.column_names:
            table = table.drop_columns(["candidates"])
        kept_added = [added[i] for i in kept]
        if fmt == "jsonl":  # merged as Python values: a JSON line may hold an input value of any type
            data = encode_part(fmt, records=_merge_rows(table.to_pylist(), kept_added))
        else:
            data = encode_part(fmt, table=_add_columns(table, kept_added, chunk.id))
    counts["seconds"] = round(time.perf_counter() - started, 4)
    return ChunkResult(chunk.id, data, counts)


def _added_types() -> dict[str, pa.DataType]:
    """The added columns in output order, typed the same in every chunk."""
    import pyarrow as pa

    return {"prob_chosen": pa.float64(), "prob_a": pa.float64(), SCORES: pa.list_(pa.float64()),
            RANKING: pa.list_(pa.int64()), BEST: pa.string(), BEST_INDEX: pa.int64()}


def _added_names(added: list[dict[str, Any]]) -> list[str]:
    """The added columns some row of the chunk has, in output order."""
    return [name for name in _added_types() if any(name in extra for extra in added)]


def _merge_rows(rows: list[dict[str, Any]], added: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (from an Arrow table) with the columns of ``_add_columns``: the same keys, in the same order."""
    names = _added_names(added)
    for row, extra in zip(rows, added):
        for name in names:
            row[name] = extra[name] if name in extra else row.get(name)
    return rows


def _add_columns(table: pa.Table, added: list[dict[str, Any]], chunk: int) -> pa.Table:
    """``table`` with the added columns (those any row has; nulls for the others), typed the same in
    every chunk; an input column of the same name stays in place, its value kept where the row's kind
    does not add the column."""
    import pyarrow as pa

    types = _added_types()
    for name in _added_names(added):
        kind = types[name]
        if name not in table.column_names:
            table = table.append_column(name, pa.array([extra.get(name) for extra in added], type=kind))
            continue
        own = table.column(name)
        values = [extra[name] if name in extra else value for extra, value in zip(added, own.to_pylist())]
        try:
            column = pa.array(values, type=kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as error:
            raise DataError(f"chunk {chunk}: input column {name!r} ({own.type}) holds values that the column scoring "
                            f"adds under that name ({kind}) cannot hold ({error}); rename the input column, or write "
                            "JSONL output (OUT ending in .jsonl)") from None
        table = table.set_column(table.column_names.index(name), name, column)
    return table


def score_with_retries(model: PairwiseScorer, chunk: Chunk, config: ScoreConfig) -> ChunkResult:
    """``score_chunk``, run again up to ``config.retries`` times when it raises; a bad row (``DataError``)
    is the input's fault and is raised at once."""
    for attempt in range(config.retries + 1):
        try:
            return score_chunk(model, chunk, config)
        except DataError:
            raise
        except Exception as error:
            if attempt == config.retries:
                raise
            logger.warning("chunk %d failed (%s: %s); trying again (%d of %d)", chunk.id, type(error).__name__,
                           error, attempt + 1, config.retries)
    raise AssertionError("unreachable")
