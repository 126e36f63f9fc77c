import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "tinyrm", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-2000:])
    return proc


def test_train_eval_compare(tiny_bert, pairs_file, tmp_path):
    out = tmp_path / "model"
    run("train", "--model", tiny_bert, "--data", str(pairs_file), str(pairs_file), "--output", str(out),
        "--batch-size", "8", "--micro-batch-size", "4", "--max-steps", "2", "--max-length", "96",
        "--dora-rank", "4", "--freeze-layers", "1", "--seed", "3", "--lr", "1e-3", "--epochs", "1")
    saved = json.loads((out / "tinyrm.json").read_text())  # the flags reached the model, not only the parser
    assert (out / "adapter").is_dir() and saved["adapter"]
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["use_dora"] and adapter["r"] == 4 and adapter["layers_to_transform"] == [1]  # layer 0 frozen
    options = saved["extra"]["train"]
    assert (options["dora_rank"], options["freeze_layers"], options["seed"], options["lr"]) == (4, 1, 3, 1e-3)
    results = tmp_path / "results.json"
    proc = run("eval", "--model", str(out), "--data", str(pairs_file), "--output", str(results),
               "--batch-size", "8", "--max-length", "96")
    data = json.loads(results.read_text())
    assert set(data) >= {"model", "accuracy", "n", "subsets", "domains"}
    assert data["n"] == 24 and 0.0 <= data["accuracy"] <= 1.0
    assert sum(v["n"] for v in data["subsets"].values()) == 24
    assert sum(v["n"] for v in data["domains"].values()) == 24 and set(data["domains"]) <= {"chat", "reasoning"}
    assert "accuracy" in proc.stdout
    proc = run("compare", "--model", str(out), "--prompt", "2+2?", "--a", "4", "--b", "5")
    assert 0.0 <= json.loads(proc.stdout)["prob_a"] <= 1.0


def test_bad_data_row_exits_2_with_location(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p"}\n')
    proc = run("eval", "--model", "default", "--data", str(bad), check=False)
    assert proc.returncode == 2
    assert f"{bad}:2: missing field 'chosen'" in proc.stderr


@pytest.mark.parametrize("flag", ["--help"])
def test_help_lists_contract_flags(flag):
    out = run("train", flag).stdout
    for name in ["--model", "--data", "--output", "--prefix", "--lr", "--epochs", "--batch-size",
                 "--micro-batch-size", "--max-length", "--max-steps", "--dora-rank", "--freeze-layers",
                 "--seed", "--resume", "--dora-alpha", "--dora-targets", "--loss", "--skip-bad-rows"]:
        assert name in out


def test_every_flag_of_every_command_is_documented():
    # A flag the parser has and no page names is a flag nobody finds; -h / --help excepted.
    import argparse
    import re
    from pathlib import Path

    from tinyrm.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    text = "\n".join(p.read_text(encoding="utf-8") for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    documented = set(re.findall(r"--[a-z0-9][a-z0-9-]*", text))
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = sorted(f"{name} {flag}" for name, sub in subparsers.choices.items() for action in sub._actions
                     for flag in action.option_strings if flag.startswith("--") and flag != "--help"
                     and flag not in documented)
    assert not missing, f"flags no docs page names: {missing}"


def test_no_progress_leaves_stderr_without_any_bar(tiny_bert, pairs_file):
    # Not tinyrm's bar only: transformers' "Loading weights" bar too (a real process, stderr not a TTY).
    args = ["eval", "--model", tiny_bert, "--data", str(pairs_file), "--max-length", "96", "--json"]
    quiet = run(*args, "--no-progress")
    assert json.loads(quiet.stdout)["n"] == 24
    assert "%|" not in quiet.stderr and "Loading weights" not in quiet.stderr, quiet.stderr[-500:]
    assert "%|" in run(*args).stderr  # the bars are there without the flag
