"""benchmarks/length_bias.py: the held-out split never puts a DebugBench problem or a prompt on both sides."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "length_bias.py"


def load_script():
    spec = importlib.util.spec_from_file_location("length_bias_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_is_by_problem_and_by_prompt(tmp_path):
    bench = load_script()
    assert bench.group_key({"id": "debugbench-python3-two-sum-condition_error-3", "prompt": "p"},
                           "reasoning-debugbench") == "two-sum"
    assert bench.group_key({"id": "x-1", "prompt": "hello"}, "chat-arena-v1") == "hello"
    debug, chat = tmp_path / "reasoning-debugbench.jsonl", tmp_path / "chat-arena-v1.jsonl"
    bugs = ["condition_error", "faulty_indexing", "undefined_objects"]
    debug.write_text("".join(json.dumps({"id": f"debugbench-{lang}-problem-{i % 20}-{bugs[i % 3]}-{i}",
                                         "prompt": f"{lang} {i}", "chosen": "a", "rejected": "b"}) + "\n"
                             for i in range(120) for lang in ("cpp", "java")))
    chat.write_text("".join(json.dumps({"id": f"c{i}", "prompt": f"prompt {i % 30}", "chosen": "a",
                                        "rejected": "bb"}) + "\n" for i in range(90)))
    train, held = bench.split_files([str(debug), str(chat)], 0.3, 1000, seed=5, out=tmp_path / "split")
    train_rows = [json.loads(line) for line in train.read_text().splitlines()]
    held_rows = [json.loads(line) for line in held.read_text().splitlines()]
    assert len(train_rows) + len(held_rows) == 240 + 90 and held_rows and train_rows
    for name in ("reasoning-debugbench", "chat-arena-v1"):
        seen = {bench.group_key(r, name) for r in train_rows if (r["id"].startswith("debugbench")) ==
                (name == "reasoning-debugbench")}
        held_groups = {bench.group_key(r, name) for r in held_rows if r["subset"] == name}
        assert held_groups and not seen & held_groups  # no problem / prompt on both sides
    assert set(bench.METHODS) >= {"ends", "ends+balance", "diff", "diff+balance", "overfit"}
    assert all("length_balance" in options for options in bench.METHODS.values())  # explicit, default-proof
