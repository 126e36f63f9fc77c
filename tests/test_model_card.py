"""Model cards: every save_pretrained writes README.md with what the model is, how it was trained and
how to use it; record_eval adds a measured accuracy."""

from __future__ import annotations

import json

from tinyrm import RewardModel
from tinyrm.config import RewardConfig
from tinyrm.model_card import build_card, record_eval
from tinyrm.train import TrainConfig, train

DOMAINS = {"safety": "Which response is safer?", "reasoning": "Which response is more correct?"}


def test_card_fields_from_the_config():
    config = RewardConfig(
        base_model="answerdotai/ModernBERT-base", read="cls", domain_prefixes=DOMAINS, prefix="Pick one.",
        extra={"data": ["data/train.jsonl"], "train": {"lr": 5e-5, "batch_size": 256, "dora_rank": 0},
               "result": {"steps": 120, "pairs": 30720, "seconds": 99.5},
               "eval": {"test.jsonl": {"accuracy": 0.9125, "n": 400}}},
    )
    card = build_card(config, path="runs/rm")
    assert "base_model: answerdotai/ModernBERT-base" in card and "library_name: tinyrm" in card
    assert "- base model: `answerdotai/ModernBERT-base`" in card and "- objective: `cloze`" in card
    assert "- template: `flan`" in card and '- prefix (instruction): "Pick one."' in card
    assert "- read position: `cls`" in card
    assert '  - `safety`: "Which response is safer?"' in card and '  - `reasoning`: ' in card
    assert "- data: `data/train.jsonl`" in card and "120 steps, 30720 pairs" in card and "lr=5e-05" in card
    assert "| test.jsonl | 0.9125 | 400 |" in card
    assert 'RewardModel.from_pretrained("runs/rm")' in card and "AutoModelForSequenceClassification" not in card
    # A local base model is named but kept out of the hub metadata; the embedded default is spelled out.
    assert "base_model:" not in build_card(RewardConfig(base_model="/tmp/some/folder"))
    assert "sentence-transformers/all-MiniLM-L6-v2" in build_card(RewardConfig(base_model="default"))


def test_untrained_wrapped_checkpoint_card(tiny_bert, tmp_path):
    RewardModel.from_pretrained(tiny_bert, device="cpu").save_pretrained(tmp_path / "rm")
    card = (tmp_path / "rm" / "README.md").read_text()
    assert f"- base model: `{tiny_bert}`" in card and "Not trained by tinyrm" in card
    assert "No accuracy recorded" in card and "- read position: `mask`" in card


def test_trained_cloze_card_and_the_eval_hook(tiny_bert, pairs_file, tmp_path):
    out = tmp_path / "rm"
    train(TrainConfig(model=tiny_bert, data=[str(pairs_file)], output=str(out), objective="cloze", read="cls",
                      domain_prefixes=DOMAINS, batch_size=4, micro_batch_size=4, max_steps=2, max_length=96,
                      save_steps=0, lr=1e-3, precision="fp32"))
    card = (out / "README.md").read_text()
    assert f"- base model: `{tiny_bert}`" in card and "- objective: `cloze`" in card
    assert "- template: `flan`" in card and '- prefix (instruction): "Select the best response."' in card
    assert "- read position: `cls`" in card and '  - `safety`: "Which response is safer?"' in card
    assert f"- data: `{pairs_file}`" in card and "- trained: 2 steps" in card and "lr=0.001" in card
    assert f'RewardModel.from_pretrained("{out}")' in card

    results = {"model": str(out), "accuracy": 0.75, "n": 24, "domains": {"chat": {"accuracy": 0.8, "n": 10}}}
    entry = record_eval(out, results, data=[str(pairs_file)])
    assert entry == {"accuracy": 0.75, "n": 24, "data": [str(pairs_file)], "domains": {"chat": 0.8}}
    saved = json.loads((out / "tinyrm.json").read_text())
    assert saved["extra"]["eval"]["pairs.jsonl"]["accuracy"] == 0.75
    assert "| pairs.jsonl | 0.7500 | 24 |" in (out / "README.md").read_text()
    # The folder still loads, and saving it again keeps the recorded accuracy in the card.
    rm = RewardModel.from_pretrained(str(out), device="cpu")
    rm.save_pretrained(tmp_path / "again")
    assert "| pairs.jsonl | 0.7500 | 24 |" in (tmp_path / "again" / "README.md").read_text()


def test_process_model_card(tiny_bert, tmp_path):
    from .process_helpers import rows_file

    data = rows_file(tmp_path / "p.jsonl")
    out = tmp_path / "prm"
    train(TrainConfig(model=tiny_bert, data=[str(data)], output=str(out), objective="process", batch_size=4,
                      micro_batch_size=4, max_steps=1, max_length=128, save_steps=0))
    card = (out / "README.md").read_text()
    assert "- objective: `process`" in card and '"Check the solution step by step."' in card
    assert "- step context: `prefix`" in card and f"- data: `{data}`" in card and "correct verdicts: 8" in card
    assert "rm.score_steps(" in card


def test_eval_record_flag_writes_the_accuracy_into_the_card(tiny_bert, pairs_file, tmp_path):
    from tinyrm.cli import main

    out = tmp_path / "rm"
    RewardModel.from_pretrained(tiny_bert, device="cpu").save_pretrained(out)
    assert main(["eval", "--model", str(out), "--data", str(pairs_file), "--max-length", "96", "--record"]) == 0
    saved = json.loads((out / "tinyrm.json").read_text())["extra"]["eval"]["pairs.jsonl"]
    assert 0.0 <= saved["accuracy"] <= 1.0 and saved["n"] > 0
    assert f"| pairs.jsonl | {saved['accuracy']:.4f} | {saved['n']} |" in (out / "README.md").read_text()
    # A hub id or a plain checkpoint has no folder of ours to write to: one clear error, nothing written.
    assert main(["eval", "--model", tiny_bert, "--data", str(pairs_file), "--max-length", "96", "--record"]) == 2


def test_keys_of_a_newer_tinyrm_json_survive_a_rewrite(tmp_path):
    # An older tinyrm recording an eval (or calibrating) must not strip what a newer one wrote.
    RewardConfig(base_model="m").save(tmp_path)
    data = json.loads((tmp_path / "tinyrm.json").read_text())
    (tmp_path / "tinyrm.json").write_text(json.dumps({**data, "future_option": {"k": 1}}))
    loaded = RewardConfig.load(tmp_path)
    assert loaded == RewardConfig(base_model="m") and loaded.other_fields == {"future_option": {"k": 1}}
    record_eval(tmp_path, {"accuracy": 0.75, "n": 4}, name="dev")
    saved = json.loads((tmp_path / "tinyrm.json").read_text())
    assert saved["future_option"] == {"k": 1} and saved["extra"]["eval"]["dev"]["accuracy"] == 0.75
    assert "other_fields" not in saved
