import json

import pytest

from tinyrm.data import DataError, load_pairs, parse_hub_spec


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r", "domain": "chat"})


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "bad JSON"),
        (json.dumps({"prompt": "p", "chosen": "c"}), "missing field 'rejected'"),
        (json.dumps({"prompt": "p", "chosen": 3, "rejected": "r"}), "'chosen' must be a string"),
        (json.dumps({"prompt": "p", "chosen": "  ", "rejected": "r"}), "'chosen' is empty"),
        (json.dumps(["p", "c", "r"]), "expected a JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, line, reason):
    path = write(tmp_path / "x.jsonl", [GOOD, line, GOOD])
    with pytest.raises(DataError) as info:
        load_pairs([str(path)])
    assert str(info.value).startswith(f"{path}:2: ")
    assert reason in str(info.value)


def test_skip_bad_rows_counts(tmp_path):
    path = write(tmp_path / "x.jsonl", [GOOD, "{bad", GOOD, json.dumps({"prompt": "p"})])
    report = load_pairs([str(path)], skip_bad_rows=True)
    assert len(report.pairs) == 2 and report.skipped == 2


def test_files_mix_and_subset_defaults_to_stem(tmp_path):
    a = write(tmp_path / "alpha.jsonl", [GOOD])
    b = write(tmp_path / "beta.jsonl", [json.dumps({"prompt": "p", "chosen": "c", "rejected": "r", "subset": "s"})])
    pairs = load_pairs([str(a), str(b)]).pairs
    assert [p.subset for p in pairs] == ["alpha", "s"]
    assert len(load_pairs([str(tmp_path / "*.jsonl")]).pairs) == 2
    with pytest.raises(DataError, match="matches no file"):
        load_pairs([str(tmp_path / "none*.jsonl")])


def test_a_file_is_the_file_named_even_with_glob_characters_and_is_read_once(tmp_path):
    literal = write(tmp_path / "split[1].jsonl", [GOOD])
    write(tmp_path / "split1.jsonl", [GOOD] * 5)  # what the name means as a pattern
    report = load_pairs([str(literal)])
    assert len(report.pairs) == 1 and report.per_file == {str(literal): 1}
    # named twice (a glob and the file itself): read once, counted once
    report = load_pairs([str(tmp_path / "*.jsonl"), str(tmp_path / "split1.jsonl")])
    assert len(report.pairs) == 6 and sum(report.per_file.values()) == 6


def test_hub_loader_on_local_datasets_folder(tmp_path):
    import datasets

    rows = {"prompt": ["p1", "p2"], "chosen": ["c1", "c2"], "rejected": ["r1", "r2"], "subset": ["x", "y"]}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    pairs = load_pairs([f"hub:{tmp_path / 'ds'}:test"]).pairs
    assert [(p.prompt, p.chosen, p.subset) for p in pairs] == [("p1", "c1", "x"), ("p2", "c2", "y")]
    with pytest.raises(DataError, match=r"no split 'train' in .*; it has test"):
        load_pairs([f"hub:{tmp_path / 'ds'}:train"])
    assert parse_hub_spec("hub:allenai/reward-bench:filtered") == ("allenai/reward-bench", "filtered")
    assert parse_hub_spec("hub:Anthropic/hh-rlhf") == ("Anthropic/hh-rlhf", "train")
