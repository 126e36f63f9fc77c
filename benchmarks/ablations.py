"""Training ablations on the demo set: one `tinyrm train` configuration per run, held-out accuracy.

The demo's synthetic splits (2,400 train / 400 held-out pairs, seed 0) at the demo's budget, unless
overridden; each override is a TrainConfig field. Run one at a time on a quiet machine.

usage:
  .venv/bin/python benchmarks/ablations.py [--set FIELD=VALUE ...] [--name NAME] [--out runs/ablations]
e.g.
  .venv/bin/python benchmarks/ablations.py --set objective=cloze --set precision=fp32
Prints one JSON line (and appends it to <out>/results.jsonl).
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from dataclasses import asdict, fields
from pathlib import Path

from tinyrm import load
from tinyrm.evaluation.evaluate import evaluate_pairs
from tinyrm.tools.demo import DemoConfig
from tinyrm.tools.synthetic import demo_splits, write_jsonl
from tinyrm.train import TrainConfig, train


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--name", default=None)
    ap.add_argument("--out", default="runs/ablations")
    args = ap.parse_args()

    demo = DemoConfig()
    out = Path(args.out)
    train_pairs, test_pairs = demo_splits(demo.n_train, demo.n_test, demo.seed)
    train_file = write_jsonl(train_pairs, out / "data" / "train.jsonl")
    overrides = dict(item.split("=", 1) for item in args.set)
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        ap.error(f"unknown TrainConfig fields: {sorted(unknown)}")
    name = args.name or ",".join(f"{k}={v}" for k, v in overrides.items()) or "demo-defaults"
    # objective cloze unless overridden: the ablations are about the cloze path.
    config = TrainConfig(model="default", data=[str(train_file)], output=str(out / "model"), objective="cloze",
                         read="mask", lr=demo.lr,
                         epochs=demo.epochs, batch_size=demo.batch_size, micro_batch_size=demo.micro_batch_size,
                         max_length=demo.max_length, seed=demo.seed, save_steps=0)
    for key, value in overrides.items():
        setattr(config, key, parse_value(value))
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start
    after = evaluate_pairs(load(config.output), test_pairs)
    record = {"name": name, "accuracy": round(after["accuracy"], 4),
              "domains": {k: round(v["accuracy"], 3) for k, v in after["subsets"].items()},
              "steps": result.steps, "train_seconds": round(seconds, 1),
              "objective": config.objective, "read": config.read,
              "config": {k: v for k, v in asdict(config).items() if k in overrides}}
    line = json.dumps(record)
    print(line)
    with (out / "results.jsonl").open("a") as handle:
        handle.write(line + "\n")


if __name__ == "__main__":
    main()
