"""``tinyrm score`` / ``tinyrm.score`` with the local engine: columns, order, filters, bad rows, resume."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tinyrm
from tinyrm.cli import main
from tinyrm.data import DataError
from tinyrm.errors import UsageError
from tinyrm.scoring import ScoreConfig, score
from tinyrm.scoring.parts import parts_dir

from .score_helpers import (
    assert_same_rows,
    mixed_rows,
    read_output,
    save_spread_model,
    summary,
    write_jsonl,
    write_parquet,
)

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return save_spread_model(tmp_path_factory.mktemp("spread-model"))


@pytest.fixture(scope="module")
def rm(model):
    return tinyrm.load(model)


_RANKS: dict[tuple, list] = {}  # (prompt, candidates) -> rm.rank(...), shared by the tests (same rows, same model)


def expected(rm, rows: list[dict], min_prob: float | None = None, keep_best: bool = False) -> list[dict]:
    """What the output must hold, row by row, from the model's own compare_batch and rank."""
    pairs = [(r["prompt"], r["chosen"], r["rejected"]) if "chosen" in r else (r["prompt"], r["a"], r["b"])
             for r in rows if "candidates" not in r]
    probs = iter(rm.compare_batch(pairs))
    out = []
    for row in rows:
        row = dict(row)
        if "candidates" in row:
            key = (row["prompt"], tuple(row["candidates"]))
            if key not in _RANKS:
                _RANKS[key] = rm.rank(row["prompt"], row["candidates"])
            ranked = _RANKS[key]
            row["ranking"] = [i for i, _ in ranked]
            row["scores"] = [dict(ranked)[i] for i in range(len(row["candidates"]))]
            if keep_best:
                row["best"], row["best_index"] = row.pop("candidates")[ranked[0][0]], ranked[0][0]
        elif "chosen" in row:
            row["prob_chosen"] = next(probs)
            if min_prob is not None and row["prob_chosen"] < min_prob:
                continue
        else:
            row["prob_a"] = next(probs)
        out.append(row)
    return out


def test_every_row_gets_its_kind_columns_in_input_order(model, rm, tmp_path):
    rows = mixed_rows(30)
    data = write_jsonl(rows, tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    result = score(model=model, data=str(data), output=str(out), chunk_rows=7, progress=False)
    assert_same_rows(read_output(out), expected(rm, rows), tol=1e-5)
    assert (result.rows, result.pairs, result.ab_pairs, result.candidate_sets) == (30, 10, 10, 10)
    assert result.kept_rows == 30 and result.dropped_rows == 0 and result.chunks == 5
    assert summary(out)["kept_rows"] == 30 and not parts_dir(out).exists()


def test_parquet_input_keeps_every_column_and_its_type(model, tmp_path):
    import pyarrow.parquet as pq

    rows = mixed_rows(24)
    data = write_parquet(rows, tmp_path / "in.parquet", row_group_size=5)
    score(ScoreConfig(model=model, data=[str(data)], output=str(tmp_path / "out.parquet"), chunk_rows=8,
                      progress=False))
    source, result = pq.read_table(data), pq.read_table(tmp_path / "out.parquet")
    for field in source.schema:
        assert result.schema.field(field.name).type == field.type
        assert result.column(field.name).to_pylist() == source.column(field.name).to_pylist()
    assert set(result.column_names) == set(source.column_names) | {"prob_chosen", "prob_a", "scores", "ranking"}


def test_min_prob_keeps_exactly_the_pairs_at_or_above_it(model, rm, tmp_path):
    rows = mixed_rows(36)
    probs = sorted(rm.compare_batch([(r["prompt"], r["chosen"], r["rejected"]) for r in rows if "chosen" in r]))
    half = len(probs) // 2
    threshold = (probs[half - 1] + probs[half]) / 2  # between two pairs: no float noise decides (exact: test_chunk_*)
    data = write_jsonl(rows, tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    result = score(model=model, data=[str(data)], output=str(out), min_prob=threshold, chunk_rows=10, progress=False)
    want = expected(rm, rows, min_prob=threshold)
    assert_same_rows(read_output(out), want, tol=1e-6)
    assert result.dropped_rows == len(probs) // 2 and result.kept_rows == 36 - len(probs) // 2
    assert sum("prob_a" in row for row in want) == 12  # a/b rows have no label: never dropped
    assert summary(out)["dropped_rows"] == result.dropped_rows


def test_keep_best_reduces_each_candidate_set_to_its_best(model, rm, tmp_path):
    rows = mixed_rows(30)
    data = write_jsonl(rows, tmp_path / "in.jsonl")
    out = tmp_path / "out.parquet"
    result = score(model=model, data=[str(data)], output=str(out), keep_best=True, chunk_rows=16, progress=False)
    got = read_output(out)
    assert_same_rows(got, expected(rm, rows, keep_best=True), tol=1e-5)
    sets = [row for row in rows if "candidates" in row]
    assert all("candidates" not in row for row in got)
    assert result.candidates_kept == len(sets)
    assert result.candidates_dropped == sum(len(row["candidates"]) - 1 for row in sets)


def test_bad_rows_fail_with_path_line_reason(model, tmp_path):
    good = mixed_rows(6)
    lines = [json.dumps(good[0]), "", json.dumps(good[1]), "{not json", json.dumps({"prompt": "p", "chosen": "c"}),
             json.dumps({"prompt": "p", "chosen": "c", "rejected": "r", "candidates": ["x"]}),
             json.dumps({"prompt": "p", "candidates": ["x", 3]}), json.dumps(good[2])]
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"^{data}:4: bad JSON"):
        score(model=model, data=[str(data)], output=str(tmp_path / "out.jsonl"), progress=False)
    code = main(["score", "--model", model, "--data", str(data), "--output", str(tmp_path / "o.parquet"),
                 "--no-progress"])
    assert code == 2
    result = score(model=model, data=[str(data)], output=str(tmp_path / "skip.jsonl"), skip_bad_rows=True,
                   chunk_rows=3, progress=False)
    assert [row["id"] for row in read_output(tmp_path / "skip.jsonl")] == [0, 1, 2]
    assert result.bad_rows == 4 and result.rows == 7
    assert summary(tmp_path / "skip.jsonl")["skipped_rows"] == [
        [f"{data}:4", "bad JSON (Expecting property name enclosed in double quotes)"],
        [f"{data}:5", "missing field 'rejected'"],
        [f"{data}:6", "a row is a pair (chosen, rejected), an a/b pair or a candidate set, not several: "
                      "it has chosen+rejected / candidates"],
        [f"{data}:7", "candidates[1] must be a string, got int"]]


def test_bad_parquet_row_names_its_row(model, tmp_path):
    rows = mixed_rows(6)
    rows[4]["prompt"] = None
    data = write_parquet(rows, tmp_path / "in.parquet")
    with pytest.raises(DataError, match=rf"^{data}:row 4: missing field 'prompt'$"):
        score(model=model, data=[str(data)], output=str(tmp_path / "out.parquet"), progress=False)


def test_hub_dataset_folder_with_candidate_sets(model, rm, tmp_path):
    import datasets

    rows = [row for row in mixed_rows(18) if "candidates" in row]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hubset"))
    out = tmp_path / "out.jsonl"
    score(model=model, data=[f"hub:{tmp_path / 'hubset'}"], output=str(out), chunk_rows=4, progress=False)
    assert_same_rows(read_output(out), expected(rm, rows), tol=1e-5)


def test_cli_prints_the_counts_and_json(model, tmp_path, capsys):
    data = write_jsonl(mixed_rows(12), tmp_path / "in.jsonl")
    out = tmp_path / "out.parquet"
    assert main(["score", "--model", model, "--data", str(data), "--output", str(out), "--min-prob", "0.7",
                 "--keep-best", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "scored 12 rows (4 chosen/rejected pairs, 4 a/b pairs, 4 candidate sets)" in text
    assert "--keep-best: kept 4 candidates" in text and f"wrote {out}" in text
    assert main(["score", "--model", model, "--data", str(data), "--output", str(out), "--json", "--no-progress"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["rows"] == 12 and document["kept_rows"] == 12 and document["format"] == "parquet"
    assert main(["score", "--model", model, "--data", str(data), "--output", str(out), "--num-workers", "2"]) == 2
    assert "--num-workers, --gpus-per-worker and --ray-address apply to --engine ray" in capsys.readouterr().err


def test_another_job_in_the_parts_folder_is_started_afresh(model, tmp_path):
    data = write_jsonl(mixed_rows(9), tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    parts = parts_dir(out)
    parts.mkdir()
    (parts / "job.json").write_text(json.dumps({"fingerprint": "another job"}))
    (parts / "part-000000.jsonl").write_text('{"stale": true}\n')
    (parts / "part-000000.json").write_text('{"rows": 9}\n')
    result = score(model=model, data=[str(data)], output=str(out), progress=False)
    assert result.resumed_chunks == 0 and all("stale" not in row for row in read_output(out))


def test_an_input_column_named_like_an_added_one_follows_one_rule_in_every_chunk(model, rm, tmp_path):
    rows = [{"id": 0, "prompt": "q", "chosen": "good", "rejected": "bad", "scores": [4, 2], "best": "own"},
            {"id": 1, "prompt": "s", "candidates": ["a", "bb"], "scores": [1, 3], "prob_a": 0.5},
            {"id": 2, "prompt": "r", "a": "x", "b": "yy", "prob_chosen": 0.25},
            {"id": 3, "prompt": "t", "chosen": "c", "rejected": "dd", "prob_chosen": 0.75}]
    # The rule: a row whose kind adds the column gets the added value, any other keeps its own.
    for source in (write_jsonl(rows, tmp_path / "in.jsonl"), write_parquet(rows, tmp_path / "in.parquet")):
        for suffix in (".parquet", ".jsonl"):
            for chunk_rows in (1, 2, 4):  # pairs alone, pairs with a set, all in one chunk
                keep_best = chunk_rows == 2
                out = tmp_path / f"{source.suffix[1:]}-{chunk_rows}{suffix}"
                score(model=model, data=[str(source)], output=str(out), chunk_rows=chunk_rows, keep_best=keep_best,
                      progress=False)
                got = [{k: v for k, v in row.items() if v is not None} for row in read_output(out)]
                assert_same_rows(got, expected(rm, rows, keep_best=keep_best), tol=1e-5)
    # Text: a type the added scores (lists of floats) cannot share one Parquet column with.
    rows[0]["scores"], rows[1]["scores"] = "mine", "theirs"
    source = write_parquet(rows, tmp_path / "text.parquet")
    with pytest.raises(DataError, match=r"^chunk 0: input column 'scores' \(string\) .*rename .*\.jsonl"):
        score(model=model, data=[str(source)], output=str(tmp_path / "text-out.parquet"), progress=False)
    score(model=model, data=[str(source)], output=str(tmp_path / "text.jsonl"), progress=False)
    assert read_output(tmp_path / "text.jsonl")[0]["scores"] == "mine"


def test_skipped_row_details_are_kept_up_to_what_is_shown_and_counted_whole(model, rm, tmp_path):
    from tinyrm.scoring.chunk import score_chunk
    from tinyrm.scoring.readers import plan_chunks, read_unit

    lines = [json.dumps(row) for row in mixed_rows(3)] + [json.dumps({"prompt": f"p{i}"}) for i in range(150)]
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n")
    config = ScoreConfig(model=model, data=[str(data)], output=str(tmp_path / "out.jsonl"), skip_bad_rows=True)
    plan = plan_chunks([str(data)], 1000)
    (chunk,) = read_unit(plan.units[0], plan.chunk_rows, True, None)
    counts = score_chunk(rm, chunk, config).counts  # what part-N.json, the engines and Ray carry
    assert counts["bad_rows"] == 150 and len(counts["skipped_rows"]) == 100
    assert counts["skipped_rows"][-1] == [f"{data}:103", chunk.skipped[99][1]]
    result = score(config, progress=False)
    assert result.bad_rows == 150 and len(result.skipped_rows) == 100 and result.kept_rows == 3


def test_a_value_the_joined_parquet_type_cannot_hold_stops_the_run_at_its_chunk(model, tmp_path):
    rows = [{"id": 2**60 + 1, "prompt": "p", "chosen": "c", "rejected": "r"},
            {"id": 1.5, "prompt": "p", "chosen": "c", "rejected": "r"},
            {"id": 3, "prompt": "p", "chosen": "c", "rejected": "r"}]
    data = write_jsonl(rows, tmp_path / "in.jsonl")
    out = tmp_path / "out.parquet"
    with pytest.raises(DataError, match=r"^chunk 1: chunk 0's column 'id': values of type int64 do not fit double"):
        score(model=model, data=[str(data)], output=str(out), chunk_rows=1, progress=False)
    assert sorted(p.name for p in parts_dir(out).glob("part-*.json")) == ["part-000000.json"] and not out.exists()
    assert main(["score", "--model", model, "--data", str(data), "--output", str(out), "--chunk-rows", "1",
                 "--no-progress"]) == 2  # resumed: stops at the same chunk, before the join
    score(model=model, data=[str(data)], output=str(tmp_path / "out.jsonl"), chunk_rows=1, progress=False)
    assert [row["id"] for row in read_output(tmp_path / "out.jsonl")] == [2**60 + 1, 1.5, 3]


def test_the_fingerprint_holds_the_precision_the_chunks_are_scored_in(model, tmp_path):
    from tinyrm.inference.precision import cpu_bf16_native
    from tinyrm.scoring.job import describe
    from tinyrm.scoring.parts import PartStore
    from tinyrm.scoring.readers import plan_chunks

    data = write_jsonl(mixed_rows(6), tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    plan = plan_chunks([str(data)], 1024)

    def fingerprint(**options) -> str:
        return describe(ScoreConfig(model=model, data=[str(data)], output=str(out), **options), plan, "jsonl")[0]

    # auto is bf16 on a GPU, fp32 on most CPUs: the same arguments on another device are another job.
    assert fingerprint(device="cpu") == fingerprint(device="cpu", precision="bf16" if cpu_bf16_native() else "fp32")
    assert fingerprint(device="cpu") != fingerprint(device="cuda") == fingerprint(device="cuda", precision="auto")
    assert fingerprint(engine="ray") != fingerprint(engine="ray", gpus_per_worker=1)
    # A job stopped on a GPU, its chunk done in bf16, started again on the CPU: scored afresh, not resumed.
    fp, job = describe(ScoreConfig(model=model, data=[str(data)], output=str(out), device="cuda"), plan, "jsonl")
    store = PartStore.open(out, "jsonl", fp, plan.chunks, job)
    store.commit(0, b'{"scored": "in bf16"}\n', {"rows": 6, "kept_rows": 1})
    result = score(model=model, data=[str(data)], output=str(out), device="cpu", progress=False)
    assert result.resumed_chunks == 0 and [row["id"] for row in read_output(out)] == list(range(6))


SLOW_DRIVER = """
import sys, time
import tinyrm.scoring.local as local
score_with_retries = local.score_with_retries
def slow(model, chunk, config):
    time.sleep(0.1)
    return score_with_retries(model, chunk, config)
local.score_with_retries = slow
from tinyrm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_output(model, tmp_path, capsys):
    data = write_jsonl(mixed_rows(48), tmp_path / "in.jsonl")
    args = ["score", "--model", model, "--data", str(data), "--chunk-rows", "4", "--min-prob", "0.53", "--no-progress"]
    whole, resumed = tmp_path / "whole.parquet", tmp_path / "resumed.parquet"
    assert main([*args, "--output", str(whole)]) == 0
    driver = tmp_path / "slow_driver.py"
    driver.write_text(SLOW_DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), *args, "--output", str(resumed)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = parts_dir(resumed)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.json"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # A second run on the same output while the first is alive stops at once and touches nothing.
    with pytest.raises(UsageError, match=rf"pid {proc.pid}\) is writing --output {re.escape(str(resumed))}"):
        score(model=model, data=[str(data)], output=str(resumed), chunk_rows=4, progress=False)
    assert (parts / "job.json").is_file() and proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stderr.close()
    done = len(list(parts.glob("part-*.json")))
    assert 3 <= done < 12 and not resumed.exists()
    capsys.readouterr()
    assert main([*args, "--output", str(resumed), "--json"]) == 0  # started again with the same arguments
    report = json.loads(capsys.readouterr().out)
    assert report["resumed_chunks"] == done and report["chunks"] == 12
    assert resumed.read_bytes() == whole.read_bytes()
    assert not parts.exists() and not Path(f"{resumed}.lock").exists()  # the killed run's lock was taken over
    assert {k: v for k, v in report.items() if k in ("rows", "kept_rows", "dropped_rows", "pairs")} == \
        {k: v for k, v in summary(whole).items() if k in ("rows", "kept_rows", "dropped_rows", "pairs")}



DOC = Path(__file__).resolve().parents[1] / "docs" / "scoring.md"


def test_the_docs_python_block_runs_and_their_commands_parse(model, tmp_path, capsys):
    from tinyrm.cli import build_parser

    text = DOC.read_text(encoding="utf-8")
    (code,) = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    data = write_jsonl(mixed_rows(9), tmp_path / "pairs.jsonl")
    for old, new in {'"runs/shared"': repr(model), '"synthetic/pairs.jsonl"': repr(str(data)),
                     '"scored.jsonl"': repr(str(tmp_path / "scored.jsonl"))}.items():
        assert old in code
        code = code.replace(old, new)
    exec(compile(code, str(DOC), "exec"), {})
    assert capsys.readouterr().out.strip() and (tmp_path / "scored.jsonl").is_file()
    commands = [line for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
                for line in block.replace("\\\n", " ").splitlines() if line.startswith("tinyrm score")]
    assert len(commands) == 3
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        assert args.command == "score"
