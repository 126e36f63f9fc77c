"""``tinyrm train --report-to``: the Trainer's integrations, TensorBoard's event file read back."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tinyrm.cli import main
from tinyrm.errors import UsageError
from tinyrm.train import TrainConfig, train
from tinyrm.training.arguments import report_to


def test_tensorboard_gets_loss_learning_rate_and_dev_accuracy(tiny_bert, pairs_file, tmp_path, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    out = tmp_path / "rm"
    train(TrainConfig(model=tiny_bert, data=[str(pairs_file)], output=str(out), objective="cloze", read="cls",
                      batch_size=4, micro_batch_size=4, max_steps=3, max_length=96, save_steps=0, lr=1e-3,
                      precision="fp32", eval_data=[str(pairs_file)], eval_steps=2, report_to=["tensorboard"]))
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    for tag in ("train/loss", "train/learning_rate", "eval/accuracy"):
        assert tag in scalars, scalars
    assert [e.step for e in accumulator.Scalars("train/loss")] == [1, 2, 3]
    assert [e.step for e in accumulator.Scalars("train/learning_rate")] == [1, 2, 3]
    # The dev accuracy in TensorBoard is the one metrics.jsonl records, at the same steps.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("event") == "eval"]
    curve = accumulator.Scalars("eval/accuracy")
    assert [e.step for e in curve] == [r["step"] for r in evals] == [2, 3]
    assert [e.value for e in curve] == pytest.approx([r["accuracy"] for r in evals])
    for subset, accuracy in evals[-1]["subsets"].items():
        assert accumulator.Scalars(f"eval/accuracy/{subset}")[-1].value == pytest.approx(accuracy)
    # metrics.jsonl keeps one "eval" record per evaluation (the Trainer's copy of it is not written again),
    # and logging the dev scores does not swallow the loss of the steps they were taken at.
    assert not [r for r in records if "eval_accuracy" in r]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]


def test_report_to_names_are_checked_before_training():
    assert report_to("none") == "none" and report_to(["none"]) == "none" and report_to(None) == "none"
    assert report_to(["all"]) == "all"
    assert report_to(["tensorboard"]) == ["tensorboard"]
    assert report_to("tensorboard,tensorboard") == ["tensorboard"]
    with pytest.raises(UsageError, match="unknown integration bogus; choose none, all, or from .*tensorboard"):
        report_to(["tensorboard", "bogus"])
    with pytest.raises(UsageError, match="stand alone"):
        report_to(["none", "tensorboard"])


def test_a_missing_integration_package_is_one_clear_line(monkeypatch):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: False)
    with pytest.raises(UsageError, match=r"tinyrm\[tensorboard\]"):
        report_to(["tensorboard"])


def test_the_default_reports_nowhere_and_the_cli_refuses_unknown_names(pairs_file, tmp_path, capsys):
    from pathlib import Path

    from tinyrm.training.arguments import training_arguments

    args = training_arguments(TrainConfig(micro_batch_size=2, batch_size=2), Path(tmp_path / "x"), 1)
    assert args.report_to == [] or args.report_to == ["kubeflow"]  # transformers adds kubeflow where installed
    code = main(["train", "--data", str(pairs_file), "--output", str(tmp_path / "o"), "--report-to", "bogus"])
    assert code == 2 and "--report-to: unknown integration bogus" in capsys.readouterr().err
    assert not (tmp_path / "o" / "metrics.jsonl").exists()
