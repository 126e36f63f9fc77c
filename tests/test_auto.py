"""``tinyrm.load`` / ``AutoRewardModel`` pick the class from ``tinyrm.json``; the old import paths still work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import tinyrm
from tinyrm import AutoRewardModel, ProcessRewardModel, RewardModel
from tinyrm.pairwise.baselines.model import BaselineRewardModel, save_baseline
from tinyrm.pairwise.baselines.train import build_scorer
from tinyrm.pairwise.route import RouteConfig, RoutedRewardModel, build_route
from tinyrm.process.train import build_model as build_process_model
from tinyrm.training.config import TrainConfig

PROBLEM, STEPS = "What is 2 + 3 * 4?", ["3 * 4 = 12.", "2 + 12 = 14."]


@pytest.fixture(scope="module")
def saved(tiny_bert, tmp_path_factory) -> dict[str, str]:
    """One tiny untrained folder per kind (built as the trainers build them, saved as they save them)."""
    from tinyrm.tools.synthetic import generate, write_jsonl

    root = tmp_path_factory.mktemp("kinds")
    folders = {"plain": tiny_bert}
    for name in ("cloze", "chat", "reasoning"):
        RewardModel.from_pretrained(tiny_bert, device="cpu", max_length=64).save_pretrained(root / name)
        folders[name] = str(root / name)
    for objective in ("classifier", "token"):
        config = TrainConfig(model=tiny_bert, objective=objective, pooling="cls", max_length=64)
        save_baseline(root / objective, *build_scorer(config))
        folders[objective] = str(root / objective)
    for objective in ("process", "outcome"):
        config = TrainConfig(model=tiny_bert, objective=objective, max_length=64, read="mask")
        build_process_model(config).save_pretrained(root / objective)
        folders[objective] = str(root / objective)
    data = write_jsonl([p for p in generate(24, seed=1) if p.domain in ("chat", "reasoning")], root / "pairs.jsonl")
    build_route(RouteConfig(specialists={"chat": folders["chat"], "reasoning": folders["reasoning"]},
                            data=[str(data)], output=str(root / "route")))
    folders["route"] = str(root / "route")
    return folders


@pytest.mark.parametrize(("kind", "cls"), [
    ("plain", RewardModel), ("cloze", RewardModel), ("classifier", BaselineRewardModel),
    ("token", BaselineRewardModel), ("process", ProcessRewardModel), ("outcome", ProcessRewardModel),
    ("route", RoutedRewardModel),
])
def test_load_dispatches_on_the_saved_objective(saved, kind, cls):
    rm = tinyrm.load(saved[kind], device="cpu")
    assert type(rm) is cls
    assert type(AutoRewardModel.from_pretrained(saved[kind], device="cpu")) is cls
    assert type(RewardModel.from_pretrained(saved[kind], device="cpu")) is cls  # the spelling of every release
    if kind != "plain":
        assert rm.config.objective == json.loads((Path(saved[kind]) / "tinyrm.json").read_text())["objective"]
    assert 0.0 <= rm.compare(PROBLEM, "14", "20") <= 1.0


def test_the_loaded_kinds_score_as_their_class_says(saved):
    prm = tinyrm.load(saved["process"], device="cpu", context="full")
    assert prm.spec.context == "full" and len(prm.score_steps(PROBLEM, STEPS)) == 2
    assert 0.0 <= tinyrm.load(saved["outcome"], device="cpu").score_solution(PROBLEM, STEPS) <= 1.0
    assert isinstance(tinyrm.load(saved["classifier"], device="cpu").score(PROBLEM, "14"), float)
    pairwise = tinyrm.load(saved["cloze"], device="cpu")
    assert not hasattr(pairwise, "score_steps")  # RewardModel is pairwise only
    zero_shot = ProcessRewardModel.from_pretrained(saved["cloze"], device="cpu")  # untrained process prompt
    assert zero_shot.spec.objective == "process" and len(zero_shot.score_steps(PROBLEM, STEPS)) == 2
    with pytest.raises(ValueError, match="does not judge steps"):
        ProcessRewardModel.from_pretrained(saved["classifier"], device="cpu")


def test_unknown_objective_and_no_instances(saved, tmp_path):
    folder = tmp_path / "odd"
    shutil.copytree(saved["cloze"], folder)
    config = json.loads((folder / "tinyrm.json").read_text())
    (folder / "tinyrm.json").write_text(json.dumps({**config, "objective": "telepathy"}))
    with pytest.raises(ValueError, match="unknown objective 'telepathy'"):
        tinyrm.load(str(folder))
    with pytest.raises(TypeError):
        AutoRewardModel()


def test_old_import_paths_still_work():
    import tinyrm.aggregate
    import tinyrm.evaluation.rewardbench
    import tinyrm.process.aggregate
    import tinyrm.process.steps
    import tinyrm.rewardbench
    import tinyrm.steps
    import tinyrm.train
    import tinyrm.training.config
    from tinyrm.process import load_rows, split_questions, write_rows  # noqa: F401  (docs/process.md)

    assert tinyrm.aggregate is tinyrm.process.aggregate and tinyrm.aggregate.aggregate([0.2, 0.9]) == 0.2
    assert tinyrm.steps is tinyrm.process.steps and tinyrm.steps.split("Step 1: a Step 2: b") == ["a", "b"]
    assert tinyrm.rewardbench is tinyrm.evaluation.rewardbench and "chat" in tinyrm.rewardbench.CATEGORIES
    assert tinyrm.train.TrainConfig is tinyrm.training.config.TrainConfig and callable(tinyrm.train.train)
    assert tinyrm.RewardConfig is tinyrm.config.RewardConfig
