"""The main job: train the embedded default model on the offline synthetic set, before vs after."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..auto import load
from ..defaults import resolve_defaults
from ..evaluation.evaluate import evaluate_pairs
from ..model_card import record_eval
from ..pairwise.baselines.model import BaselineRewardModel
from ..pairwise.baselines.train import build_scorer
from ..pairwise.train import build_model
from ..train import train
from ..training.config import TrainConfig
from .synthetic import demo_splits, write_jsonl


@dataclass
class DemoConfig:
    output: str = "runs/demo"
    n_train: int = 2400
    n_test: int = 400
    epochs: float = 1.0
    # "auto": what `tinyrm train --model default` picks for this backbone (tinyrm.defaults); the
    # ablations behind it are in docs/training.md. Cloze stays one flag away (--objective cloze).
    objective: str = "auto"
    batch_size: int = 16
    micro_batch_size: int = 16
    lr: float = 1e-4
    max_length: int = 96
    seed: int = 0


def untrained_model(config: TrainConfig):
    """The model ``train(config)`` starts from (same objective, same seeded fresh head), for "before"."""
    from transformers import set_seed

    set_seed(config.seed)
    if config.objective == "cloze":
        return build_model(config)
    scorer, tokenizer, reward_config = build_scorer(config)
    return BaselineRewardModel(scorer, tokenizer, reward_config, device="cpu")


def run_demo(config: DemoConfig) -> dict:
    out = Path(config.output)
    train_pairs, test_pairs = demo_splits(config.n_train, config.n_test, config.seed)
    train_file = write_jsonl(train_pairs, out / "data" / "train.jsonl")
    write_jsonl(test_pairs, out / "data" / "test.jsonl")
    train_config = resolve_defaults(TrainConfig(
        model="default", data=[str(train_file)], output=str(out / "model"), objective=config.objective,
        lr=config.lr, epochs=config.epochs, batch_size=config.batch_size, micro_batch_size=config.micro_batch_size,
        max_length=config.max_length, seed=config.seed, save_steps=0,
    ))

    before_model = untrained_model(train_config)
    before = evaluate_pairs(before_model, test_pairs)
    del before_model

    start = time.perf_counter()
    result = train(train_config)
    train_seconds = time.perf_counter() - start
    after = evaluate_pairs(load(str(out / "model")), test_pairs)
    record_eval(out / "model", after, name="demo held-out set", data=[str(out / "data" / "test.jsonl")])
    summary = {
        "objective": train_config.objective, "before": before, "after": after, "train": asdict(result),
        "train_wall_seconds": round(train_seconds, 1), "config": asdict(config),
    }
    (out / "demo_results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
