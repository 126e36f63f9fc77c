"""Recipes: packaged paper configurations, CLI override semantics, a tiny-ModernBERT training run."""

import json

import pytest

from tinyrm.cli import build_parser, main
from tinyrm.cli.core import train_config_from_args
from tinyrm.prompt import PAPER_PREFIXES
from tinyrm.training.recipes import Recipe, load_recipe, recipe_names, write_recipe

PAPER = {  # TinyRM Table 2: lr, frozen layers, DoRA rank
    "large-chat": (7.865e-5, 26, 0), "large-reasoning": (2.327e-5, 12, 128), "large-safety": (5.845e-5, 7, 0),
    "large-all-at-once": (9.388e-5, 5, 0), "base-chat": (7.642e-5, 2, 0), "base-reasoning": (8.354e-5, 17, 128),
    "base-safety": (1.478e-5, 12, 0),
}


def test_packaged_recipes_match_the_paper():
    assert recipe_names() == sorted(PAPER)
    for name, (lr, freeze, rank) in PAPER.items():
        config = load_recipe(name).config
        assert (config["lr"], config["freeze_layers"], config.get("dora_rank", 0)) == (lr, freeze, rank)
        assert config["prefix"] == PAPER_PREFIXES[name]
        assert config["model"] == f"answerdotai/ModernBERT-{name.split('-')[0]}"
        assert (config["epochs"], config["batch_size"], config["weight_decay"]) == (1.0, 256, 1e-5)


def parse(*argv):
    return train_config_from_args(build_parser().parse_args(["train", "--data", "x.jsonl", "--output", "o", *argv]))


def test_explicit_flags_override_the_recipe_even_at_default_values():
    config = parse("--recipe", "large-reasoning", "--model", "m", "--lr", "5e-5", "--dora-rank", "0")
    assert config.model == "m" and config.lr == 5e-5  # 5e-5 is also TrainConfig's default
    assert config.dora_rank == 0
    assert config.freeze_layers == 12 and config.prefix == "Which response is more correct?"


def test_without_recipe_defaults_are_unchanged():
    from tinyrm.train import TrainConfig

    assert parse() == TrainConfig(data=["x.jsonl"], output="o")


def test_unknown_recipe_and_bad_keys_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe 'nope'.*large-reasoning"):
        load_recipe("nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"config": {"lr": 1e-5, "learning_rate": 1}}))
    with pytest.raises(ValueError, match=r"bad.json: unknown training option\(s\) in 'config': learning_rate"):
        load_recipe(str(bad))


def test_recipe_file_round_trip(tmp_path):
    path = write_recipe(tmp_path / "r.json", Recipe(name="mine", config={"lr": 3e-5, "dora_rank": 8}))
    assert load_recipe(str(path)).config == {"lr": 3e-5, "dora_rank": 8}


def test_recipe_trains_tiny_modernbert(tiny_modernbert, pairs_file, tmp_path, capsys):
    """The large-reasoning recipe (DoRA r128, its prefix) with the backbone and depth overridden."""
    out = tmp_path / "out"
    code = main(["train", "--recipe", "large-reasoning", "--model", tiny_modernbert, "--freeze-layers", "1",
                 "--data", str(pairs_file), "--output", str(out), "--batch-size", "8", "--micro-batch-size", "4",
                 "--max-steps", "2", "--max-length", "96", "--save-steps", "0", "--precision", "fp32"])
    assert code == 0
    saved = json.loads((out / "tinyrm.json").read_text())
    train = saved["extra"]["train"]
    assert (train["lr"], train["dora_rank"], train["freeze_layers"]) == (2.327e-5, 128, 1)
    assert saved["prefix"] == "Which response is more correct?" and saved["adapter"] == "adapter"


def test_recipes_command_lists_all(capsys):
    assert main(["recipes", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == sorted(PAPER)
