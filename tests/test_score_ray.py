"""``tinyrm score --engine ray`` on a local Ray with 2 CPUs (started once for the module, then stopped):
the same rows, columns, order and filters as ``--engine local``, with no row lost when a worker is
killed; a bad row stops the run with its location."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from tinyrm.scoring import score
from tinyrm.scoring.ray_engine import KILL_ENV

from .score_helpers import assert_same_rows, mixed_rows, read_output, save_spread_model, summary

ray = pytest.importorskip("ray")

COUNTS = ("rows", "pairs", "ab_pairs", "candidate_sets", "bad_rows", "kept_rows", "dropped_rows",
          "candidates_kept", "candidates_dropped")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A model, an input with a bad row (skipped), the options, and the local engine's output."""
    root = tmp_path_factory.mktemp("score-ray")
    model = save_spread_model(root / "model")
    rows = mixed_rows(36)
    lines = [json.dumps(row) for row in rows]
    lines.insert(20, json.dumps({"prompt": "no answers"}))
    data = root / "in.jsonl"
    data.write_text("\n".join(lines) + "\n")
    options = dict(model=model, data=[str(data)], chunk_rows=5, min_prob=0.53, keep_best=True, skip_bad_rows=True,
                   progress=False)
    local = root / "local.jsonl"
    score(output=str(local), **options)
    return root, options, local


def test_ray_writes_what_local_writes_even_when_a_worker_is_killed(local_ray, job, monkeypatch):
    root, options, local = job
    marker = root / "killed"
    monkeypatch.setenv(KILL_ENV, f"3:{marker}")  # the actor about to score chunk 3 is SIGKILLed, once
    out = root / "ray.parquet"
    result = score(output=str(out), engine="ray", num_workers=2, **options)
    assert marker.exists()  # Ray restarted the actor and ran its unit again
    assert_same_rows(read_output(out), read_output(local), tol=1e-5)  # other threads per process: float noise
    assert {k: summary(out)[k] for k in COUNTS} == {k: summary(local)[k] for k in COUNTS}
    assert result.rows == 37 and result.bad_rows == 1 and 0 < result.dropped_rows < result.pairs
    assert result.engine == "ray" and result.chunks == 8


def test_a_bad_row_comes_back_from_the_actor_with_its_location(job):
    """The actor turns a bad row into an error row (no retry), which run_ray raises as that DataError;
    called in this process: a second actor pool would only add its start-up time."""
    import pyarrow as pa

    from tinyrm.scoring.config import ScoreConfig
    from tinyrm.scoring.ray_engine import ChunkScorer
    from tinyrm.scoring.readers import plan_chunks

    root, options, _ = job
    config = ScoreConfig(**{**options, "skip_bad_rows": False}, output=str(root / "bad.jsonl"))
    plan = plan_chunks(config.data, config.chunk_rows)
    unit = next(u for u in plan.units if u.first_line <= 21 < u.first_line + u.rows)
    batch = pa.table({"unit": [json.dumps(asdict(unit))], "wanted": [[unit.first_chunk]]})
    (out,) = ChunkScorer(asdict(config), plan.chunk_rows)(batch)
    assert out.column("error").to_pylist()[0] == (f"{config.data[0]}:21: missing fields: a row needs 'chosen' and "
                                                  "'rejected', 'a' and 'b', or 'candidates'")
    (good,) = ChunkScorer(asdict(config), plan.chunk_rows)(pa.table({"unit": [json.dumps(asdict(plan.units[0]))],
                                                                     "wanted": [[0]]}))
    assert good.column("error").to_pylist() == [""] and json.loads(good.column("counts")[0].as_py())["rows"] == 5
