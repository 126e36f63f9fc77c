"""Length bias in every pairwise results JSON (tinyrm.evaluation.length_bias) and ``tinyrm eval --predictions``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyrm.cli import main
from tinyrm.config import RewardConfig
from tinyrm.data import PreferencePair, load_pairs
from tinyrm.evaluation.length_bias import length_bias
from tinyrm.evaluation.results import prediction_records, score_pairs
from tinyrm.model_card import add_eval, build_card


def _pair(chosen: str, rejected: str, subset: str, domain: str | None) -> PreferencePair:
    return PreferencePair(prompt="p", chosen=chosen, rejected=rejected, subset=subset, domain=domain)


# (pair, P(chosen better)); the comment says: which side is longer, correct?, prefers the longer?
HAND = [
    (_pair("aaaa", "bb", "s1", "chat"), 0.9),  # longer, right, longer
    (_pair("aaa", "b", "s1", "chat"), 0.5),  # longer, tie = wrong, prefers neither
    (_pair("aaaaa", "bb", "s2", "safety"), 0.7),  # longer, right, longer
    (_pair("a", "bbbb", "s1", "safety"), 0.8),  # shorter, right, shorter
    (_pair("aa", "bbbbb", "s2", "chat"), 0.1),  # shorter, wrong, longer
    (_pair("ab", "cd", "s2", None), 0.9),  # equal
    (_pair("xy", "zw", "s1", "reasoning"), 0.5),  # equal
    (_pair("q", "rrr", "s2", "reasoning"), 0.5),  # shorter, tie = wrong, prefers neither
    (_pair("éé", "ab", "s1", None), 0.9),  # equal in characters (not in UTF-8 bytes)
]


def _entry(longer: tuple[int, float | None], shorter: tuple[int, float | None], equal: int,
           agrees: float | None) -> dict:
    return {"chosen_longer": {"n": longer[0], "accuracy": longer[1]},
            "chosen_shorter": {"n": shorter[0], "accuracy": shorter[1]},
            "equal_length": {"n": equal}, "agrees_with_longer": agrees}


def test_arithmetic_on_a_hand_built_set():
    pairs, probs = [p for p, _ in HAND], [q for _, q in HAND]
    results = score_pairs(probs, pairs, "hand")
    assert results["accuracy"] == pytest.approx(5 / 9)
    assert results["length_bias"] == _entry((3, 2 / 3), (3, 1 / 3), 3, 3 / 6)
    assert results["subsets"]["s1"]["length_bias"] == _entry((2, 1 / 2), (1, 1.0), 2, 1 / 3)
    assert results["subsets"]["s2"]["length_bias"] == _entry((1, 1.0), (2, 0.0), 1, 2 / 3)
    assert results["domains"]["chat"]["length_bias"] == _entry((2, 1 / 2), (1, 0.0), 0, 2 / 3)
    assert results["domains"]["safety"]["length_bias"] == _entry((1, 1.0), (1, 1.0), 0, 1 / 2)
    # No pair with the chosen response longer: its accuracy is None, not 0.
    assert results["domains"]["reasoning"]["length_bias"] == _entry((0, None), (1, 0.0), 1, 0.0)
    assert set(results["domains"]) == {"chat", "safety", "reasoning"}  # pairs without a domain are in no entry


def test_arithmetic_against_an_independent_count():
    """Every entry against a count written separately, with the accuracy's own rule (P > 0.5)."""
    pairs, probs = [p for p, _ in HAND], [q for _, q in HAND]
    results = score_pairs(probs, pairs, "hand")

    def recount(rows: list[tuple[PreferencePair, float]]) -> dict:
        longer = [q for p, q in rows if len(p.chosen) > len(p.rejected)]
        shorter = [q for p, q in rows if len(p.chosen) < len(p.rejected)]
        same = [q for p, q in rows if len(p.chosen) == len(p.rejected)]
        right_longer = [q for q in longer if q > 0.5]
        right_shorter = [q for q in shorter if q > 0.5]
        unequal = len(longer) + len(shorter)
        picks_longer = len(right_longer) + len([q for q in shorter if 1 - q > 0.5])
        return _entry((len(longer), len(right_longer) / len(longer) if longer else None),
                      (len(shorter), len(right_shorter) / len(shorter) if shorter else None),
                      len(same), picks_longer / unequal if unequal else None)

    assert results["length_bias"] == recount(HAND)
    for group, key in (("subsets", "subset"), ("domains", "domain")):
        for name, row in results[group].items():
            members = [(p, q) for p, q in HAND if getattr(p, key) == name]
            assert row["n"] == len(members)
            assert row["accuracy"] == pytest.approx(sum(q > 0.5 for _, q in members) / len(members))
            assert row["length_bias"] == recount(members), (group, name)


def test_empty_and_mismatched_inputs():
    assert length_bias([], []) == _entry((0, None), (0, None), 0, None)
    with pytest.raises(ValueError, match="probabilities"):
        length_bias([HAND[0][0]], [])


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


ROWS = [
    {"id": "a1", "prompt": "q", "chosen": "a long answer", "rejected": "short", "domain": "chat", "subset": "x"},
    {"id": "a2", "prompt": "q", "chosen": "tiny", "rejected": "a much longer reply", "domain": "chat"},
    {"id": "a3", "prompt": "q", "chosen": "same", "rejected": "size", "domain": "safety", "subset": "y"},
    {"prompt": "q", "chosen": "no id here at all", "rejected": "none", "subset": "y"},
    {"id": 7, "prompt": "q", "chosen": "ok", "rejected": "not ok at all", "domain": "safety", "subset": "x"},
]


def _recompute(predictions: list[dict], pairs: list[PreferencePair]) -> tuple[float, dict]:
    """Accuracy and length bias from the predictions file and the input rows alone."""
    probs = [row["prob_chosen"] for row in predictions]
    return sum(q > 0.5 for q in probs) / len(probs), length_bias(pairs, probs)


def test_length_baseline_agrees_with_longer_and_predictions(tmp_path, capsys):
    data = _write_jsonl(tmp_path / "rows.jsonl", ROWS)
    out, predictions = tmp_path / "results.json", tmp_path / "predictions.jsonl"
    assert main(["eval", "--baseline", "length", "--data", str(data), "--output", str(out),
                 "--predictions", str(predictions)]) == 0
    printed = capsys.readouterr().out
    assert "agrees with longer" in printed and "chosen longer acc (n)" in printed
    results = json.loads(out.read_text())
    entries = [results] + list(results["subsets"].values()) + list(results["domains"].values())
    assert len(entries) == 1 + 3 + 2  # subsets x, y, rows (the file's stem); domains chat, safety
    for entry in entries:
        bias = entry["length_bias"]
        assert bias["agrees_with_longer"] in (1.0, None)
        assert bias["chosen_longer"]["accuracy"] in (1.0, None) and bias["chosen_shorter"]["accuracy"] in (0.0, None)
    assert results["length_bias"] == _entry((2, 1.0), (2, 0.0), 1, 1.0)

    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert lines == [
        {"id": "a1", "subset": "x", "domain": "chat", "prob_chosen": 1.0},
        {"id": "a2", "subset": "rows", "domain": "chat", "prob_chosen": 0.0},
        {"id": "a3", "subset": "y", "domain": "safety", "prob_chosen": 0.5},
        {"subset": "y", "prob_chosen": 1.0},
        {"id": "7", "subset": "x", "domain": "safety", "prob_chosen": 0.0},
    ]
    accuracy, bias = _recompute(lines, load_pairs([str(data)]).pairs)
    assert accuracy == results["accuracy"] and bias == results["length_bias"]


def test_rewardbench_baseline_reports_length_bias(tmp_path):
    rows = [{**row, "subset": s} for row, s in zip(ROWS, ["alpacaeval-easy", "alpacaeval-easy", "hep-go",
                                                        "donotanswer", "hep-go"])]
    data = _write_jsonl(tmp_path / "rb.jsonl", rows)
    out, predictions = tmp_path / "rb.json", tmp_path / "rb-predictions.jsonl"
    assert main(["eval", "--benchmark", "rewardbench", "--baseline", "length", "--data", str(data),
                 "--output", str(out), "--predictions", str(predictions)]) == 0
    results = json.loads(out.read_text())
    assert results["length_bias"]["agrees_with_longer"] == 1.0
    assert all("length_bias" in row for group in ("subsets", "domains") for row in results[group].values())
    assert results["subsets"]["alpacaeval-easy"]["length_bias"] == _entry((1, 1.0), (1, 0.0), 0, 1.0)
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [row["subset"] for row in lines] == [row["subset"] for row in rows]
    accuracy, bias = _recompute(lines, load_pairs([str(data)]).pairs)
    assert accuracy == results["accuracy"] and bias == results["length_bias"]


def test_model_predictions_recompute_the_results(tiny_bert, pairs_file, tmp_path):
    out, predictions = tmp_path / "results.json", tmp_path / "predictions.jsonl"
    assert main(["eval", "--model", tiny_bert, "--data", str(pairs_file), "--batch-size", "8", "--max-length", "96",
                 "--output", str(out), "--predictions", str(predictions)]) == 0
    results = json.loads(out.read_text())
    pairs = load_pairs([str(pairs_file)]).pairs
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(lines) == len(pairs) == results["n"]
    assert [row.get("id") for row in lines] == [p.id for p in pairs]  # input order
    assert all(set(row) <= {"id", "subset", "domain", "prob_chosen"} and "prob_chosen" in row for row in lines)
    assert [(row.get("subset"), row.get("domain")) for row in lines] == [(p.subset, p.domain) for p in pairs]
    accuracy, bias = _recompute(lines, pairs)
    assert accuracy == results["accuracy"] and bias == results["length_bias"]
    for name, row in results["domains"].items():
        members = [(p, q["prob_chosen"]) for p, q in zip(pairs, lines) if p.domain == name]
        assert row["length_bias"] == length_bias([p for p, _ in members], [q for _, q in members])


def test_predictions_are_refused_for_process_eval(tmp_path, pairs_file, capsys):
    assert main(["eval", "--objective", "process", "--data", str(pairs_file),
                 "--predictions", str(tmp_path / "p.jsonl")]) == 2
    assert "--predictions" in capsys.readouterr().err


def test_prediction_records_keep_only_present_keys():
    pairs = [PreferencePair("p", "a", "b", id="r1", subset="s"), PreferencePair("p", "a", "b", domain="chat")]
    assert prediction_records([0.25, 0.75], pairs) == [{"id": "r1", "subset": "s", "prob_chosen": 0.25},
                                                        {"domain": "chat", "prob_chosen": 0.75}]


def test_model_card_shows_length_bias():
    pairs, probs = [p for p, _ in HAND], [q for _, q in HAND]
    config = RewardConfig()
    entry = add_eval(config, score_pairs(probs, pairs, "hand"), name="hand.jsonl")
    assert entry["length_bias"]["agrees_with_longer"] == 0.5
    card = build_card(config)
    assert "| data | accuracy | pairs | chosen longer acc (n) | chosen shorter acc (n) | agrees with longer |" in card
    assert "| hand.jsonl | 0.5556 | 9 | 0.6667 (3) | 0.3333 (3) | 0.5000 |" in card
