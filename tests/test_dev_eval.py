"""--eval-data: held-out accuracy during cloze training, with the live weights."""

from __future__ import annotations

import json

import pytest

from tinyrm import RewardModel
from tinyrm.data import load_pairs
from tinyrm.evaluation.evaluate import evaluate_pairs
from tinyrm.train import TrainConfig, train


def test_dev_scores_during_training_match_the_saved_model(spread_bert, pairs_file, tmp_path):
    out = tmp_path / "rm"
    train(TrainConfig(model=spread_bert, data=[str(pairs_file)], output=str(out), objective="cloze", read="cls",
                      batch_size=4, micro_batch_size=4, max_steps=3, max_length=96, save_steps=0, lr=1e-3,
                      precision="fp32", eval_data=[str(pairs_file)], eval_steps=2))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [2, 3]  # every 2 steps, and the last one
    pairs = load_pairs([str(pairs_file)]).pairs
    assert all(r["n"] == len(pairs) for r in evals)
    # The last in-training score is the saved model's score: the callback saw the final weights.
    saved = evaluate_pairs(RewardModel.from_pretrained(str(out), device="cpu"), pairs)
    assert evals[-1]["accuracy"] == pytest.approx(saved["accuracy"])
    card = json.loads((out / "tinyrm.json").read_text())["extra"]["eval"]["pairs.jsonl"]
    assert card["accuracy"] == pytest.approx(saved["accuracy"]) and card["n"] == len(pairs)
    # Accuracy on 24 pairs need not move in 3 steps; the log loss (the last evaluation's, kept in the card) does.
    untrained = RewardModel.from_pretrained(spread_bert, device="cpu", read="cls")
    untrained.engine.config.precision = "fp32"
    loss, before = saved["calibration"]["log_loss"], evaluate_pairs(untrained, pairs)["calibration"]["log_loss"]
    assert abs(loss - before) > 1e-6  # training moved the scores, 1000x the tolerance below
    assert card["calibration"]["log_loss"] == pytest.approx(loss, abs=1e-9)


def test_scoring_follows_weights_the_trainer_moved(tiny_bert):
    """The Trainer moves the model (to the GPU) after it was built on the CPU; the dev scores must run where the
    weights are (on a CUDA machine the test above runs that path whole). The meta device stands in here."""
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu")
    rm.model.to("meta")
    rm.follow_weights()
    assert rm.device.type == "meta" and rm._answer_ids_t.device.type == "meta"
    assert rm._answer_ids_t.shape == (len(rm.answer_ids),)


def test_eval_data_is_refused_for_objectives_without_the_hook(tiny_bert, pairs_file, tmp_path):
    with pytest.raises(ValueError, match="--eval-data"):
        train(TrainConfig(model=tiny_bert, data=[str(pairs_file)], output=str(tmp_path / "c"),
                          objective="classifier", max_steps=1, eval_data=[str(pairs_file)]))
