"""Trains the embedded default model for a few steps on ../shared/data and evaluates on dev/hhh."""

import pytest

from tinyrm import RewardModel
from tinyrm.evaluation.evaluate import evaluate
from tinyrm.train import TrainConfig, train

from .conftest import require_shared_data


@pytest.mark.integration
def test_default_model_on_shared_data(tmp_path):
    data = require_shared_data()
    out = tmp_path / "rm"
    result = train(TrainConfig(model="default", data=[str(data / "train" / "*.jsonl")], output=str(out),
                               batch_size=16, micro_batch_size=8, max_steps=3, max_length=128, save_steps=0))
    assert result.steps == 3 and result.pairs_per_second > 0
    results = evaluate_dev(out, data)
    assert results["n"] == 221
    assert set(results["domains"]) == {"chat", "safety"}
    assert 0.0 <= results["accuracy"] <= 1.0
    assert RewardModel.from_pretrained(str(out)).config.max_length == 128


def evaluate_dev(out, data):
    from tinyrm.evaluation.evaluate import EvalConfig

    return evaluate(EvalConfig(model=str(out), data=[str(data / "dev" / "hhh.jsonl")], max_length=128,
                               batch_size=32, output=str(out / "results.json")))
