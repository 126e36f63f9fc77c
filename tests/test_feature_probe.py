"""benchmarks/feature_probe.py: frozen-feature cues and linear probes, on a tiny random BERT."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "feature_probe.py"


@pytest.fixture
def feature_probe(monkeypatch):
    spec = importlib.util.spec_from_file_location("feature_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "feature_probe", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _learnable(path: Path, n: int) -> Path:
    """Chosen responses always share a word the rejected ones never have, in two sources."""
    from tinyrm.data import PreferencePair
    from tinyrm.tools.synthetic import write_jsonl

    pairs = [PreferencePair(prompt=f"question {i}", chosen=f"excellent helpful answer {i}",
                            rejected=f"terrible rude reply {i} padded out to be the longer one",
                            domain="chat" if i % 2 else "safety", source="even" if i % 2 == 0 else "odd")
             for i in range(n)]
    return write_jsonl(pairs, path)


def test_feature_probe_learns_a_linear_cue_and_reports_the_heuristics(feature_probe, tiny_bert, tmp_path, capsys):
    from tinyrm.data import load_pairs
    from tinyrm.evaluation.heuristics import heuristic_results

    data = _learnable(tmp_path / "pairs.jsonl", 40)
    out = tmp_path / "probe" / "report.json"
    assert feature_probe.main(["--model", tiny_bert, "--train", str(data), "--eval", str(data), "--pairs", "40",
                               "--max-length", "32", "--c", "100", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {row["name"]: row for row in report["rows"]}
    length = rows["zero-shot: longer response wins"]
    # The same decision as the project's own length heuristic (here the rejected side is longer).
    assert length["accuracy"] == heuristic_results("length", load_pairs([str(data)]).pairs)["accuracy"] == 0.0
    assert rows["probe: the whole stratified sample"]["accuracy"] >= 0.9  # the word cue is linear
    assert {"probe: even only", "probe: odd only"} <= set(rows)
    assert rows["probe: one per domain, each eval pair scored by its domain's probe"]["train_pairs"] == 40
    for row in rows.values():
        low, high = row["ci95"]
        assert 0 <= low <= row["accuracy"] <= high <= 1
    assert report["train_sources"]["even"]["pairs"] == 20
    assert report["train_sources"]["even"]["chosen_longer"] == 0.0
    assert "| probe: the whole stratified sample | 40 |" in capsys.readouterr().out


def test_feature_probe_names_a_missing_file(feature_probe, tiny_bert, tmp_path, capsys):
    missing = tmp_path / "nope" / "*.jsonl"
    assert feature_probe.main(["--model", tiny_bert, "--train", str(missing), "--output",
                               str(tmp_path / "r.json")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
