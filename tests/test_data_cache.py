"""Training data through ``datasets``: Arrow tables cached on disk, the same examples and batches as
the encoders give directly, reuse without tokenising, a rebuild on any change, the same errors."""

import gc
import json
import logging
import os
import random

import pytest
import torch

import tinyrm.data
from tinyrm.arrow import load_pair_table, resolve_cache_dir
from tinyrm.data import (
    DataError,
    length_balanced_indices,
    length_direction,
    load_pairs,
    stratified_sample,
)
from tinyrm.inference.batches import collate
from tinyrm.pairwise.baselines.encoding import ResponseEncoder, pad_responses
from tinyrm.pairwise.baselines.train import PairCollator, PairDataset
from tinyrm.pairwise.data import ClozeCollator, ClozeDataset
from tinyrm.prompt import ClozeEncoder, get_template

PREFIXES = {"reasoning": "Which response is more correct?"}
GOOD = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r", "domain": "chat"})


@pytest.fixture
def tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


@pytest.fixture
def calls(monkeypatch):
    """Counts the JSONL files read and the sequences tokenised (by either encoder)."""
    counts = {"jsonl": 0, "cloze": 0, "responses": 0}

    def counting(cls, name, key):
        real = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            counts[key] += 1
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    counting(tinyrm.data.JsonlRows, "__iter__", "jsonl")
    counting(ClozeEncoder, "encode", "cloze")
    counting(ResponseEncoder, "encode", "responses")
    return counts


def cloze(table, tokenizer, max_length=96, order="both", seed=0, domain_prefixes=None):
    encoder = ClozeEncoder(tokenizer, get_template("flan"), max_length=max_length)
    return ClozeDataset(table, encoder, order, seed, domain_prefixes=domain_prefixes)


def arrow_files(folder, kind):
    return sorted(p.name for p in folder.glob(f"{kind}-*.arrow"))


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_modernbert"])
def test_cached_examples_and_batches_equal_the_encoders_own(model, pairs_file, tmp_path, request):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(model))
    pairs = load_pairs([str(pairs_file)]).pairs
    table = load_pair_table([str(pairs_file)], cache_dir=tmp_path)
    assert table.pairs == pairs
    dataset = cloze(table, tokenizer, max_length=48, domain_prefixes=PREFIXES)  # 48: some pairs are cut
    assert dataset.rows.cache_files  # memory-mapped from the cache folder, not rows in Python lists
    encoder = ClozeEncoder(tokenizer, get_template("flan"), max_length=48)
    expected = []
    for pair in pairs:
        prefix = PREFIXES.get(pair.domain, encoder.prefix)
        expected += [(encoder.encode(pair.prompt, pair.chosen, pair.rejected, prefix=prefix), 0),
                     (encoder.encode(pair.prompt, pair.rejected, pair.chosen, prefix=prefix), 1)]
    assert [dataset.example(i) for i in range(len(dataset))] == expected
    assert dataset.truncated == sum(enc.truncated for enc, _ in expected) > 0
    assert dataset.lengths == [len(enc.input_ids) for enc, _ in expected] and dataset.group_size == 2

    batch = ClozeCollator(0)([dataset[i] for i in range(6)])
    reference = collate([enc for enc, _ in expected[:6]], 0)
    assert set(batch) == {*reference, "labels"}
    assert ("token_type_ids" in batch) == (model == "tiny_bert")  # both layouts covered
    for key, value in reference.items():
        assert torch.equal(batch[key], value), key
    assert batch["labels"].tolist() == [0, 1] * 3 and batch["labels"].dtype == torch.long

    responses = ResponseEncoder(tokenizer, 20)
    baseline = PairDataset(table, responses)
    wanted = [(responses.encode(p.prompt, p.chosen), responses.encode(p.prompt, p.rejected)) for p in pairs]
    assert [baseline.example(i) for i in range(len(baseline))] == wanted
    assert baseline.truncated == sum(int(c.truncated) + int(r.truncated) for c, r in wanted) > 0
    assert baseline.lengths == [len(c.input_ids) + len(r.input_ids) for c, r in wanted]
    batch = PairCollator(0)([baseline[i] for i in range(4)])
    reference = pad_responses([enc for pair in wanted[:4] for enc in pair], 0)
    for key, value in reference.items():
        assert torch.equal(batch[key], value), key


def test_python_pairs_are_encoded_in_memory_alike(tokenizer, pairs_file, tmp_path):
    pairs = load_pairs([str(pairs_file)]).pairs
    in_memory = cloze(pairs, tokenizer, order="random", seed=3)
    cached = cloze(load_pair_table([str(pairs_file)], cache_dir=tmp_path), tokenizer, order="random", seed=3)
    assert not in_memory.rows.cache_files and in_memory.rows[:] == cached.rows[:]
    # One seeded order per pair, drawn as before: rng.random() < 0.5 pair by pair.
    rng = random.Random(3)
    assert cached.rows["labels"][:] == [int(rng.random() < 0.5) for _ in pairs] and cached.group_size == 1


def test_a_second_build_reuses_the_tables_without_reading_or_tokenising(tokenizer, pairs_file, tmp_path, calls):
    first = cloze(load_pair_table([str(pairs_file)], cache_dir=tmp_path), tokenizer)
    baseline = PairDataset(load_pair_table([str(pairs_file)], cache_dir=tmp_path), ResponseEncoder(tokenizer, 96))
    assert calls["jsonl"] == 1 and calls["cloze"] == len(first) and calls["responses"] == 2 * len(baseline)
    for kind in ("pairs", "cloze", "responses"):
        assert len(arrow_files(tmp_path, kind)) == 1, kind

    before = dict(calls)
    again = cloze(load_pair_table([str(pairs_file)], cache_dir=tmp_path), tokenizer)
    again_baseline = PairDataset(load_pair_table([str(pairs_file)], cache_dir=tmp_path), ResponseEncoder(tokenizer, 96))
    assert calls == before  # no JSONL line read, nothing tokenised
    assert again.rows[:] == first.rows[:] and again.truncated == first.truncated
    assert again_baseline.rows[:] == baseline.rows[:]
    # A seed only matters to a random order or a sample: with both orders and every pair it reuses too.
    cloze(load_pair_table([str(pairs_file)], cache_dir=tmp_path), tokenizer, seed=9)
    assert calls == before


def test_a_changed_setting_or_file_rebuilds(tokenizer, pairs_file, tmp_path, calls):
    def build(**kwargs):
        return cloze(load_pair_table([str(pairs_file)], cache_dir=tmp_path), tokenizer, **kwargs)

    build()
    n = calls["cloze"]
    for i, change in enumerate([dict(max_length=64), dict(domain_prefixes=PREFIXES), dict(order="random"),
                                dict(order="random", seed=1)], start=2):
        build(**change)
        assert len(arrow_files(tmp_path, "cloze")) == i, change
    assert calls["jsonl"] == 1 and calls["cloze"] == 3 * n + 2 * (n // 2)  # random: one order per pair
    sampled = load_pair_table([str(pairs_file)], cache_dir=tmp_path).sample(8, seed=0)
    cloze(sampled, tokenizer)
    assert len(arrow_files(tmp_path, "cloze")) == 6 and calls["jsonl"] == 1

    with pairs_file.open("a") as handle:  # a touched file: read and tokenised again
        handle.write(GOOD + "\n")
    rebuilt = build()
    assert calls["jsonl"] == 2 and len(arrow_files(tmp_path, "pairs")) == 2
    assert len(rebuilt) == 2 * 25  # the 24 pairs and the new one
    stat = pairs_file.stat()
    os.utime(pairs_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, new mtime
    build()
    assert calls["jsonl"] == 3


def test_a_file_under_another_name_keeps_its_own_subset(tmp_path):
    # Two links to one file: rows without a subset take the name they are read by, cached or not.
    store = tmp_path / "store.jsonl"
    store.write_text(GOOD + "\n")
    for name in ("chat", "safety"):
        (tmp_path / f"{name}.jsonl").symlink_to(store)
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("chat", "safety"):
        table = load_pair_table([str(tmp_path / f"{name}.jsonl")], cache_dir=cache)
        assert table.dataset["subset"] == [name]


def test_bad_rows_give_the_same_errors_and_counts_through_the_cache(tmp_path, caplog):
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join([GOOD, "{not json", GOOD, json.dumps({"prompt": "p"})]) + "\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    for _ in range(2):  # a failed build leaves no table behind: the error comes every time
        with pytest.raises(DataError) as info:
            load_pair_table([str(path)], cache_dir=cache)
        with pytest.raises(DataError) as direct:
            load_pairs([str(path)])
        assert str(info.value) == str(direct.value) and str(info.value).startswith(f"{path}:2: bad JSON")
    assert not list(cache.iterdir())

    for run in ("cold", "warm"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            table = load_pair_table([str(path)], skip_bad_rows=True, cache_dir=cache)
        assert (len(table), table.skipped, table.per_file) == (2, 2, {str(path): 2}), run
        assert f"{path}:2: skipped: bad JSON" in caplog.text and f"{path}:4: skipped: missing field" in caplog.text
        assert "skipped 2 malformed row(s)" in caplog.text
    with pytest.raises(DataError, match="no such file"):
        load_pair_table([str(tmp_path / "absent.jsonl")], cache_dir=cache)
    with pytest.raises(DataError, match="matches no file"):
        load_pair_table([str(tmp_path / "none*.jsonl")], cache_dir=cache)


def test_a_hub_dataset_goes_through_the_same_cache(tmp_path):
    import datasets

    rows = {"prompt": ["p1", "p2"], "chosen": ["c1", "c2"], "rejected": ["r1", " "], "domain": ["chat", None]}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    spec = f"hub:{tmp_path / 'ds'}:test"
    with pytest.raises(DataError, match=r":row 1: field 'rejected' is empty"):
        load_pair_table([spec], cache_dir=tmp_path)
    for _ in range(2):
        table = load_pair_table([spec], skip_bad_rows=True, cache_dir=tmp_path)
        assert table.pairs == load_pairs([spec], skip_bad_rows=True).pairs and table.skipped == 1
    assert len(arrow_files(tmp_path, "pairs")) == 1


def test_max_pairs_samples_the_same_pairs_as_before(pairs_file, tmp_path):
    pairs = load_pairs([str(pairs_file)]).pairs
    table = load_pair_table([str(pairs_file)], cache_dir=tmp_path)
    for n, seed in [(8, 0), (8, 5), (13, 42)]:
        assert table.sample(n, seed).pairs == stratified_sample(pairs, n, seed)
    assert table.sample(0, 0) is table and table.sample(len(pairs), 0) is table


def test_cache_folder_resolution_and_the_cli_flags(tokenizer, pairs_file, tmp_path, monkeypatch):
    from tinyrm.arrow import CACHE_ENV, default_cache_dir
    from tinyrm.cli import build_parser
    from tinyrm.cli.core import train_config_from_args
    from tinyrm.pairwise.data import load_training_pairs
    from tinyrm.train import TrainConfig

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env" == resolve_cache_dir()
    assert resolve_cache_dir(tmp_path / "mine") == tmp_path / "mine" and (tmp_path / "mine").is_dir()
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "tinyrm" / "datasets"
    config = TrainConfig(data=[str(pairs_file)], data_cache=False, max_pairs=8)
    table = load_training_pairs(config)  # --no-cache: a folder of its own, alive while a table uses it
    folder = table.cache_dir
    assert folder.name.startswith("tinyrm-data-") and arrow_files(folder, "pairs")
    rows = cloze(table, tokenizer)
    del table
    gc.collect()
    assert folder.is_dir() and len(rows) == 16  # the encoded rows still hold it ...
    del rows
    gc.collect()
    assert not folder.exists()  # ... and it goes with them

    def parse(*argv):
        return train_config_from_args(build_parser().parse_args(["train", "--data", "x", "--output", "o", *argv]))

    assert (parse().cache_dir, parse().data_cache) == (None, True)
    assert (parse("--cache-dir", "c", "--no-cache").cache_dir, parse("--no-cache").data_cache) == ("c", False)


def test_training_twice_tokenises_once_and_no_cache_leaves_nothing(tiny_bert, pairs_file, tmp_path, calls):
    from tinyrm.train import TrainConfig, train

    def run(name, **kwargs):
        return train(TrainConfig(model=tiny_bert, data=[str(pairs_file)], output=str(tmp_path / name),
                                 batch_size=4, micro_batch_size=4, max_steps=1, max_length=64, save_steps=0,
                                 precision="fp32", cache_dir=str(tmp_path / "cache"), **kwargs))

    first = run("a")
    tokenised = calls["cloze"]
    assert tokenised and first.truncated_examples >= 0
    second = run("b")
    assert calls["cloze"] == tokenised and second.truncated_examples == first.truncated_examples
    listing = sorted(p.name for p in (tmp_path / "cache").iterdir())
    run("c", data_cache=False)
    assert calls["cloze"] == 2 * tokenised  # tokenised afresh ...
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == listing  # ... outside the cache
    run("d", objective="classifier")
    run("e", objective="classifier")
    # Training keeps the length-balanced pairs (the default); read here without tinyrm's reader (counted).
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    balanced = len(length_balanced_indices([r.get("domain") for r in rows],
                                           [length_direction(r["chosen"], r["rejected"]) for r in rows], 0, 0))
    assert calls["responses"] == 2 * balanced and calls["jsonl"] == 2  # the pairs table serves both objectives


def test_data_pipeline_benchmark_runs_cold_then_warm(tiny_bert, pairs_file, tmp_path):
    """benchmarks/data_pipeline.py on a tiny model: two fresh processes, the second on the first's cache."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "data_pipeline.py"
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(script), "--data", str(pairs_file), "--model", tiny_bert,
                           "--set", "max_length=64", "--set", "batch_size=4", "--set", "micro_batch_size=4",
                           "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    cold, warm = summary["rows"]
    assert (cold["run"], warm["run"], summary["pairs"]) == ("cold", "warm", 24)
    assert cold["steps"] == warm["steps"] == 1 and cold["cache_mib"] == warm["cache_mib"]
    for row in (cold, warm):
        assert 0 < row["seconds_to_trainer"] <= row["seconds_to_first_step"] <= row["seconds_total"]
        assert row["peak_rss_mib"] > 100
    assert "| warm |" in done.stdout


def test_tokenising_a_training_set_leaves_the_scoring_token_cache_empty(tokenizer, pairs_file, tmp_path):
    from tinyrm.inference.engine import CachingClozeEncoder

    encoder = CachingClozeEncoder(tokenizer, get_template("flan"), max_length=96)
    dataset = ClozeDataset(load_pair_table([str(pairs_file)], cache_dir=tmp_path), encoder, "both", 0)
    plain = cloze(load_pairs([str(pairs_file)]).pairs, tokenizer)
    assert dataset.rows[:] == plain.rows[:]  # the same rows as an encoder without a cache
    assert encoder.hits > 0 and encoder._cache == {}  # reused within a batch (both orders), not kept after it
