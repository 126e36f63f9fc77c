"""Optuna sweep: trials recorded, resumable from SQLite, best recipe and plots written."""

import json

import optuna

from tinyrm.cli import main
from tinyrm.tools.sweep import DORA_RANKS, LR_RANGE, PREFIX_POOL
from tinyrm.training.recipes import load_recipe


def sweep_command(model: str, data, tmp_path, study: str, startup: int):
    """(output folder, storage URL, the sweep's arguments but --trials) of a one-step sweep on ``data``."""
    out, storage = tmp_path / "sweep", f"sqlite:///{tmp_path / 'sweep.db'}"
    return out, storage, ["sweep", "--model", model, "--data", str(data), "--eval-data", str(data), "--storage",
                          storage, "--study-name", study, "--output", str(out), "--max-steps", "1", "--batch-size",
                          "4", "--micro-batch-size", "4", "--max-length", "64", "--startup-trials", str(startup)]


def test_sweep_runs_resumes_and_writes_best_recipe(tiny_bert, pairs_file, tmp_path):
    out, storage, common = sweep_command(tiny_bert, pairs_file, tmp_path, "t", startup=2)
    assert main([*common, "--trials", "3"]) == 0
    study = optuna.load_study(study_name="t", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    for trial in complete:
        p = trial.params
        assert LR_RANGE[0] <= p["lr"] <= LR_RANGE[1] and p["dora_rank"] in DORA_RANKS
        assert 0 <= p["freeze_layers"] <= 1 and p["prefix"] in PREFIX_POOL
        record = json.loads((out / "trials" / f"trial-{trial.number:04d}.json").read_text())
        assert record["accuracy"] == trial.value and record["train_config"]["lr"] == p["lr"]
        assert not (out / "trials" / f"trial-{trial.number:04d}" / "model.safetensors").exists()

    # Resuming with a larger target runs only the missing trial.
    assert main([*common, "--trials", "4"]) == 0
    study = optuna.load_study(study_name="t", storage=storage)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 4

    recipe = load_recipe(str(out / "best-recipe.json"))
    best = study.best_trial
    assert recipe.config["lr"] == best.params["lr"] and recipe.config["prefix"] == best.params["prefix"]
    assert recipe.config["model"] == tiny_bert
    for name in ("history.png", "importance.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "sweep.json").read_text())["summary"]
    assert summary["best_number"] == best.number and summary["completed"] == 4


def test_sweep_replaces_a_failed_first_trial_and_resumes_with_new_points(tiny_bert, pairs_file, tmp_path,
                                                                         monkeypatch, capsys):
    import tinyrm.train

    real_train = tinyrm.train.train
    calls = []

    def out_of_memory_once(config):  # trial 0 fails as a CUDA OOM would; later trials train for real
        calls.append(config.output)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_train(config)

    monkeypatch.setattr(tinyrm.train, "train", out_of_memory_once)
    out, storage, common = sweep_command(tiny_bert, pairs_file, tmp_path, "f", startup=10)
    # The failed trial neither ends the sweep nor counts: --trials 2 means two completed trials.
    assert main([*common, "--trials", "2"]) == 0
    assert "trial 0: accuracy failed" in capsys.readouterr().out
    study = optuna.load_study(study_name="f", storage=storage)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL] + [optuna.trial.TrialState.COMPLETE] * 2
    assert json.loads((out / "sweep.json").read_text())["summary"]["completed"] == 2

    # Resumed while still in the random startup phase: the new trial is a fresh point, not trial 0 again.
    assert main([*common, "--trials", "3"]) == 0
    trials = optuna.load_study(study_name="f", storage=storage).trials
    assert len(trials) == 4
    assert trials[3].params != trials[0].params
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4
