"""Paradigms benchmark: FLAN-cloze vs classifier head (Bradley-Terry) vs token classification.

Trains the three objectives from the same backbone on the same pairs with the same number of
optimizer steps, pairs per step, learning rate, length limit and seed, evaluates each on the same
eval files, and prints one table next to the two heuristics (longer response wins, seeded random).

Budget matching: every objective sees the same ``--pairs-per-step`` preference pairs per optimizer
step. For cloze a pair is two sequences (both orders, each holding both responses); for the
baselines it is two sequences too (chosen and rejected, each scored on its own), so the encoder
reads the same number of sequences per step, the cloze ones about twice as long. The training
pairs are a seeded sample of ``--steps x --pairs-per-step`` rows from the training files, written
once to ``<output>/train.jsonl``, so every objective sees each of them exactly once.

    python benchmarks/paradigms.py                      # defaults: ~10 min on 2 shared CPU cores
    python benchmarks/paradigms.py --steps 200 --pairs-per-step 32 --max-length 512 --lr 1e-4  # a real run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@dataclass
class ParadigmsConfig:
    train: list[str] = field(default_factory=lambda: [str(SHARED / "train" / "*.jsonl")])
    eval: list[str] = field(default_factory=lambda: [str(SHARED / "dev" / "hhh.jsonl")])
    model: str = "default"
    # "classifier-cls" / "classifier-mean": the classifier objective with that pooling.
    objectives: list[str] = field(default_factory=lambda: ["cloze", "classifier-cls", "classifier-mean", "token"])
    steps: int = 8
    pairs_per_step: int = 4
    micro_pairs: int = 4  # pairs per forward pass (gradient accumulation reaches pairs_per_step)
    max_eval_pairs: int = 0  # 0 = all
    max_length: int = 128
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    seed: int = 42
    batch_size: int = 32  # inference
    output: str = "runs/paradigms"
    reuse: bool = False  # keep models already trained in <output> with the same settings


def sample_train_pairs(config: ParadigmsConfig):
    """A seeded sample of steps x pairs_per_step pairs from all training files."""
    from tinyrm.data import load_pairs, stratified_sample

    pairs = load_pairs(config.train).pairs
    needed = config.steps * config.pairs_per_step
    if needed > len(pairs):
        print(f"note: {needed} pairs needed but only {len(pairs)} available; the run uses them all", file=sys.stderr)
    return stratified_sample(pairs, needed, config.seed), len(pairs)


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy (scipy; sound near 0 or 1 and for small n)."""
    from scipy.stats import binomtest

    if not n:
        return 0.0, 0.0
    ci = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return round(float(ci.low), 4), round(float(ci.high), 4)


def write_pairs(pairs, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for p in pairs:
            handle.write(json.dumps({k: v for k, v in asdict(p).items() if v is not None}) + "\n")
    return path


def train_config(config: ParadigmsConfig, name: str, data: Path):
    from tinyrm.train import TrainConfig

    objective, _, pooling = name.partition("-")
    # Cloze shows each pair in both orders: two examples per pair, so twice the examples per step.
    per_pair = 2 if objective == "cloze" else 1
    return TrainConfig(
        model=config.model, data=[str(data)], output=str(Path(config.output) / name), objective=objective,
        pooling=pooling or "cls", lr=config.lr, batch_size=config.pairs_per_step * per_pair,
        micro_batch_size=config.micro_pairs * per_pair, max_length=config.max_length, max_steps=config.steps,
        warmup_ratio=config.warmup_ratio, seed=config.seed, save_steps=0, epochs=1.0,
        # Every objective trains on exactly the written sample (balancing inside train would drop pairs).
        length_balance=False,
    )


def run(config: ParadigmsConfig) -> dict:
    from tinyrm import load
    from tinyrm.data import load_pairs
    from tinyrm.evaluation.evaluate import evaluate_pairs
    from tinyrm.evaluation.heuristics import heuristic_results
    from tinyrm.train import train

    train_pairs, available = sample_train_pairs(config)
    data = write_pairs(train_pairs, Path(config.output) / "train.jsonl")
    eval_pairs = load_pairs(config.eval).pairs
    if config.max_eval_pairs:
        eval_pairs = random.Random(config.seed).sample(eval_pairs, min(config.max_eval_pairs, len(eval_pairs)))
    rows = []
    for name in config.objectives:
        result = reused(train_config(config, name, data)) if config.reuse else None
        result = result or train(train_config(config, name, data))
        start = time.perf_counter()
        rm = load(result.output, device="cpu" if not _cuda() else None)
        scores = evaluate_pairs(rm, eval_pairs, batch_size=config.batch_size)
        eval_seconds = time.perf_counter() - start
        correct = round(scores["accuracy"] * scores["n"])
        scores["ci95"] = wilson_interval(correct, scores["n"])
        rows.append({"name": name, "objective": name, "steps": result.steps, "train_pairs": result.pairs,
                     "train_seconds": result.seconds, "pairs_per_second": result.pairs_per_second,
                     "eval_seconds": round(eval_seconds, 2), "trainable_parameters": result.trainable_parameters,
                     "results": scores})
    for kind in ("length", "random"):
        scores = heuristic_results(kind, eval_pairs, seed=config.seed)
        scores["ci95"] = wilson_interval(round(scores["accuracy"] * scores["n"]), scores["n"])
        rows.append({"name": f"heuristic: {kind}", "objective": kind, "steps": None, "train_pairs": None,
                     "train_seconds": None, "pairs_per_second": None, "eval_seconds": None, "results": scores})
    summary = {"config": asdict(config), "train_pairs_available": available, "eval_pairs": len(eval_pairs),
               "rows": rows}
    (Path(config.output) / "paradigms.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def reused(train_config):
    """The TrainResult of a model already trained in this output folder with the same settings, else None."""
    from tinyrm.config import RewardConfig
    from tinyrm.train import TrainResult

    folder = Path(train_config.output)
    if not (folder / "tinyrm.json").is_file():
        return None
    saved = RewardConfig.load(folder).extra
    wanted = json.loads(json.dumps({k: v for k, v in asdict(train_config).items() if k != "data"}))  # as saved
    if "result" not in saved or any(saved.get("train", {}).get(k, v) != v for k, v in wanted.items()
                                    if v not in (None, "auto")):
        return None
    print(f"reusing {folder} (trained earlier with the same settings)", file=sys.stderr)
    return TrainResult(**saved["result"])


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def table(summary: dict):
    from rich.table import Table

    domains = sorted({d for row in summary["rows"] for d in row["results"]["domains"]})
    config = summary["config"]
    t = Table(title=f"paradigms: {config['model']}, {config['steps']} steps x {config['pairs_per_step']} pairs, "
                    f"max_length {config['max_length']}, lr {config['lr']}, seed {config['seed']}; "
                    f"eval n={summary['eval_pairs']}")
    for column in ("paradigm", "steps", "train s", "pairs/s", "eval s", "accuracy", "95% CI", *domains):
        t.add_column(column, justify="left" if column == "paradigm" else "right", no_wrap=column == "paradigm")

    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for row in summary["rows"]:
        res = row["results"]
        t.add_row(row["name"], fmt(row["steps"], "d"), fmt(row["train_seconds"], ".1f"),
                  fmt(row["pairs_per_second"], ".2f"), fmt(row["eval_seconds"], ".1f"), f"{res['accuracy']:.3f}",
                  f"{res['ci95'][0]:.3f}-{res['ci95'][1]:.3f}",
                  *(f"{res['domains'][d]['accuracy']:.3f}" if d in res["domains"] else "-" for d in domains))
    return t


def parse_args(argv: list[str] | None = None) -> ParadigmsConfig:
    d = ParadigmsConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", nargs="+", default=d.train, metavar="FILE", help="training JSONL files/globs")
    p.add_argument("--eval", nargs="+", default=d.eval, metavar="FILE", help="evaluation JSONL files")
    p.add_argument("--model", default=d.model)
    p.add_argument("--objectives", nargs="+", default=d.objectives,
                   choices=["cloze", "classifier-cls", "classifier-mean", "token"])
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps, the same for every objective")
    p.add_argument("--pairs-per-step", type=int, default=d.pairs_per_step)
    p.add_argument("--micro-pairs", type=int, default=d.micro_pairs, help="pairs per forward pass")
    p.add_argument("--max-eval-pairs", type=int, default=d.max_eval_pairs, help="0 = all")
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="inference batch size")
    p.add_argument("--output", default=d.output)
    p.add_argument("--reuse", action="store_true",
                   help="keep a model already trained in <output>/<objective> with the same settings")
    args = p.parse_args(argv)
    if args.steps < 1 or args.pairs_per_step < 1 or args.micro_pairs < 1:
        p.error("--steps, --pairs-per-step and --micro-pairs must be >= 1")
    return ParadigmsConfig(**{k: v for k, v in vars(args).items()})


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from tinyrm.data import DataError

    config = parse_args(argv)
    try:
        summary = run(config)
    except DataError as error:
        print(f"paradigms: error: {error} (the shared data lives in {SHARED})", file=sys.stderr)
        return 2
    Console(width=max(Console().width, 120)).print(table(summary))  # wide enough not to squeeze the columns
    print(f"wrote {Path(config.output) / 'paradigms.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
