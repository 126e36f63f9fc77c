"""The scoring job's parts without a model: chunk plans, readers, lock-step ranking, filters, part files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinyrm.data import DataError
from tinyrm.pairwise.rank import knockout, round_robin
from tinyrm.scoring.chunk import score_chunk
from tinyrm.scoring.config import ScoreConfig
from tinyrm.scoring.parts import PartStore
from tinyrm.scoring.readers import plan_chunks, read_unit
from tinyrm.scoring.sets import knockout_sets, round_robin_sets
from tinyrm.scoring.writers import encode_part, join_parts

from .score_helpers import mixed_rows, write_jsonl


class FakeScorer:
    """P(a better than b) = sigmoid(f(a) - f(b)), f a fixed function of the text; counts its calls."""

    def __init__(self, fixed: dict[str, float] | None = None) -> None:
        self.calls = 0
        self.fixed = fixed or {}

    @staticmethod
    def strength(text: str) -> float:
        return (sum(map(ord, text)) % 23) / 4.0

    def compare_batch(self, items, batch_size: int = 32, both_orders=None) -> list[float]:
        self.calls += 1
        return [self.fixed.get(a, 1.0 / (1.0 + math.exp(self.strength(b) - self.strength(a)))) for _, a, b in items]


def all_chunks(plan, skip_bad_rows=False, wanted=None):
    return [chunk for unit in plan.units for chunk in read_unit(unit, plan.chunk_rows, skip_bad_rows, wanted)]


def test_lock_step_ranking_equals_rank_one_set_at_a_time():
    sets = [(f"q{n}", [f"answer {n}-{k}" + "!" * (k * n % 4) for k in range(n)]) for n in range(1, 10)]
    sets.append(("dup", ["same", "other", "same", "same"]))
    scorer = FakeScorer()
    got = knockout_sets(scorer, sets)
    assert scorer.calls == 4  # ceil(log2 9) rounds for every set together
    for (prompt, candidates), (ranking, scores) in zip(sets, got):
        want = knockout(FakeScorer(), prompt, candidates)
        assert (ranking, scores) == (want.ranking, want.scores)
    for (prompt, candidates), (ranking, scores) in zip(sets, round_robin_sets(FakeScorer(), sets)):
        want = round_robin(FakeScorer(), prompt, candidates)
        assert ranking == want.ranking and scores == pytest.approx(want.scores, abs=1e-12)


def test_jsonl_chunks_start_where_planned_and_keep_line_numbers(tmp_path):
    rows = mixed_rows(10)
    lines = [json.dumps(row) for row in rows]
    lines.insert(4, "   ")
    lines.insert(8, "")
    lines[10] = json.dumps({"prompt": "p", "a": "x", "b": " "})  # line 11: rows[8]
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(lines) + "\n\n")
    plan = plan_chunks([str(data)], 3)
    assert (plan.rows, plan.chunks, [u.first_line for u in plan.units]) == (10, 4, [1, 4, 8, 12])
    with pytest.raises(DataError, match=rf"^{data}:11: field 'b' is empty$"):
        all_chunks(plan)
    chunks = all_chunks(plan, skip_bad_rows=True)
    assert [c.id for c in chunks] == [0, 1, 2, 3] and [c.rows for c in chunks] == [3, 3, 3, 1]
    assert [r["id"] for c in chunks for r in c.records] == [0, 1, 2, 3, 4, 5, 6, 7, 9]
    assert chunks[2].skipped == [(f"{data}:11", "field 'b' is empty")]
    assert [c.id for c in all_chunks(plan, wanted={1, 3})] == [1, 3]


def test_parquet_units_pack_small_row_groups_and_stream_large_ones(tmp_path):
    rows = mixed_rows(17)
    table = pa.table({k: [row.get(k) for row in rows] for k in dict.fromkeys(k for row in rows for k in row)})
    path = tmp_path / "in.parquet"
    with pq.ParquetWriter(path, table.schema) as writer:
        for start, size in ((0, 2), (2, 2), (4, 2), (6, 10), (16, 1)):
            writer.write_table(table.slice(start, size))
    plan = plan_chunks([str(path)], 4)
    assert [(u.row_groups, u.start, u.rows) for u in plan.units] == [((0, 1), 0, 4), ((2,), 4, 2), ((3,), 6, 10),
                                                                     ((4,), 16, 1)]
    chunks = all_chunks(plan)
    assert [c.id for c in chunks] == list(range(6)) and [c.rows for c in chunks] == [4, 2, 4, 4, 2, 1]
    assert pa.concat_tables([c.table for c in chunks]).to_pylist() == table.to_pylist()
    assert [c.id for c in all_chunks(plan, wanted={3})] == [3]


def test_min_prob_keeps_a_pair_exactly_on_the_threshold(tmp_path):
    rows = [{"id": i, "prompt": "p", "chosen": f"c{i}", "rejected": "r"} for i in range(4)]
    rows.append({"id": 4, "prompt": "p", "a": "c0", "b": "r"})
    plan = plan_chunks([str(write_jsonl(rows, tmp_path / "in.jsonl"))], 10)
    scorer = FakeScorer({"c0": 0.25, "c1": 0.5, "c2": 0.75, "c3": 0.4999999})
    config = ScoreConfig(output=str(tmp_path / "out.jsonl"), min_prob=0.5)
    result = score_chunk(scorer, all_chunks(plan)[0], config)
    kept = [json.loads(line) for line in result.data.decode().splitlines()]
    assert [(r["id"], r.get("prob_chosen", r.get("prob_a"))) for r in kept] == [(1, 0.5), (2, 0.75), (4, 0.25)]
    assert (result.counts["kept_rows"], result.counts["dropped_rows"]) == (3, 2)


def test_a_column_changing_type_between_chunks_stops_at_that_chunk(tmp_path):
    store = PartStore.open(tmp_path / "out.parquet", "parquet", "fp", 3, {})
    store.commit(0, encode_part("parquet", records=[{"id": 1, "x": None}]), {"rows": 1})
    store.commit(1, encode_part("parquet", records=[{"id": 2.5, "x": "s", "y": [1]}]), {"rows": 1})
    with pytest.raises(DataError, match="^chunk 2: a column's values have a type"):
        store.commit(2, encode_part("parquet", records=[{"id": "three"}]), {"rows": 1})
    with pytest.raises(DataError, match="column 'id' holds values of different types in one chunk"):
        encode_part("parquet", records=[{"id": 1}, {"id": "two"}])


def test_joined_parquet_has_every_column_with_nulls_where_a_part_lacked_it(tmp_path):
    parts = []
    for i, records in enumerate([[{"a": 1, "b": None}], [], [{"c": [1.5], "b": "x"}, {"a": 2}]]):
        parts.append(tmp_path / f"part-{i}.parquet")
        parts[-1].write_bytes(encode_part("parquet", records=records))
    join_parts(parts, tmp_path / "out.parquet", "parquet")
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["a", "b", "c"] and out.schema.field("c").type.value_type == pa.float64()
    assert out.to_pylist() == [{"a": 1, "b": None, "c": None}, {"a": None, "b": "x", "c": [1.5]},
                               {"a": 2, "b": None, "c": None}]


def test_a_failing_chunk_is_retried_and_a_bad_row_is_not(tmp_path):
    from tinyrm.scoring.chunk import score_with_retries

    plan = plan_chunks([str(write_jsonl(mixed_rows(6), tmp_path / "in.jsonl"))], 10)
    (chunk,) = all_chunks(plan)

    class Flaky(FakeScorer):
        def __init__(self, failures: int, error: Exception) -> None:
            super().__init__()
            self.failures, self.error = failures, error

        def compare_batch(self, items, batch_size=32, both_orders=None):
            if self.failures:
                self.failures -= 1
                raise self.error
            return super().compare_batch(items, batch_size, both_orders)

    config = ScoreConfig(output=str(tmp_path / "out.jsonl"))  # retries=2
    assert score_with_retries(Flaky(2, RuntimeError("CUDA error")), chunk, config).counts["rows"] == 6
    with pytest.raises(RuntimeError, match="CUDA error"):
        score_with_retries(Flaky(3, RuntimeError("CUDA error")), chunk, config)
    flaky = Flaky(1, DataError("in.jsonl:3: bad"))
    with pytest.raises(DataError):
        score_with_retries(flaky, chunk, config)
    assert flaky.failures == 0 and flaky.calls == 0  # raised once, not tried again


class Killed(BaseException):
    """What a kill at that instant leaves: the call stops there (a real SIGKILL at it is not reproducible)."""


def test_a_kill_while_the_state_folder_is_built_or_removed_blocks_no_later_run(tmp_path, monkeypatch):
    import shutil

    from tinyrm.scoring import parts

    out = tmp_path / "out.parquet"

    def killed_at_job_json(path, data):
        if path.name == parts.JOB_FILE:
            raise Killed
        return write_atomic(path, data)

    write_atomic = parts.write_atomic
    monkeypatch.setattr(parts, "write_atomic", killed_at_job_json)
    with pytest.raises(Killed):  # killed after the folder was made, before job.json was in it
        PartStore.open(out, "parquet", "fp", 1, {})
    monkeypatch.undo()
    store = PartStore.open(out, "parquet", "fp", 1, {})  # was: "exists and is not the state folder"
    store.commit(0, encode_part("parquet", records=[{"id": 1}]), {"rows": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet.parts"]  # the killed run's leftover is gone

    rmtree = shutil.rmtree

    def killed_after_job_json(path, *args, **kwargs):  # rmtree may delete job.json first
        (Path(path) / parts.JOB_FILE).unlink()
        raise Killed

    for remove in (store.remove, lambda: PartStore.open(out, "parquet", "another job", 1, {})):
        monkeypatch.setattr(parts.shutil, "rmtree", killed_after_job_json)
        with pytest.raises(Killed):
            remove()
        monkeypatch.setattr(parts.shutil, "rmtree", rmtree)
        store = PartStore.open(out, "parquet", "fp", 1, {})
        assert store.resumed == 0 and (store.dir / parts.JOB_FILE).is_file()
        assert [p.name for p in tmp_path.iterdir()] == ["out.parquet.parts"]
        store.commit(0, encode_part("parquet", records=[{"id": 1}]), {"rows": 1})


@pytest.mark.parametrize("ids", [(2**60 + 1, 1.5), (1.5, 2**60 + 1)])
def test_a_value_the_joined_type_cannot_hold_stops_at_its_chunk(tmp_path, ids):
    store = PartStore.open(tmp_path / "out.parquet", "parquet", "fp", 3, {})
    store.commit(0, encode_part("parquet", records=[{"id": ids[0]}]), {"rows": 1})
    # The ints and the float unify (to double), but 2^60 + 1 has no double: found here, not at the join.
    with pytest.raises(DataError, match=r"^chunk 1: .*column 'id': values of type int64 do not fit double.*\.jsonl"):
        store.commit(1, encode_part("parquet", records=[{"id": ids[1]}]), {"rows": 1})
    assert store.done() == {0}
    big = store.part(ids.index(2**60 + 1))
    with pytest.raises(DataError, match=rf"^{big}: column 'id': .*\.jsonl"):
        join_parts([store.part(0), store.part(1)], tmp_path / "joined.parquet", "parquet")  # was a bare ArrowInvalid
