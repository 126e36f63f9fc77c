"""Train a process reward model (PRM) on some questions and measure it on held-out ones.

Questions, not rows, are held out (``tinyrm.process.split_questions``): every solution of a
question, its reference solution included, lands on the same side, so the test questions are
unseen. The PRM is trained on the training side only (``TrainConfig(objective="process")``,
class-weighted with ``--step-class-weight``) and scored once on the held-out rows; from those
scores the script reports

- step level (labelled steps): accuracy, balanced accuracy, AUROC;
- first-error-step accuracy (graded wrong solutions: the first step scored below the threshold is
  the annotated first error) and no-error accuracy (correct solutions: no step flagged);
- selection accuracy per held-out question (its reference solution against its wrong solutions,
  as in ``benchmarks/aggregation.py``) for every aggregation, next to random choice and the
  "fewest steps" heuristic.

The bounded default trains 20 steps of 16 examples. Do not expect much from a few hundred
examples on a CPU: this measures what a budget buys, it does not reproduce a paper.

    .venv/bin/python benchmarks/process_rewards.py                      # bounded default
    .venv/bin/python benchmarks/process_rewards.py --steps 40 --pairs-per-step 16 --max-length 256 \\
        --step-class-weight balanced --output runs/process-rewards/results.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tinyrm import ProcessRewardModel
from tinyrm.cli.output import make_console
from tinyrm.process.aggregate import METHODS, aggregate
from tinyrm.process.data import ProcessRow, load_rows, question_key, split_questions, write_rows
from tinyrm.process.evaluation import step_metrics
from tinyrm.process.prompt import CONTEXTS
from tinyrm.process.scoring import score_many
from tinyrm.process.train import parse_class_weight
from tinyrm.train import TrainConfig, train

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "process" / "mrgsm8k-steps.jsonl"
if str(HERE) not in sys.path:  # the candidate sets and selection rule of benchmarks/aggregation.py
    sys.path.insert(0, str(HERE))
from aggregation import candidate_sets, selection_accuracy  # noqa: E402


@dataclass
class ProcessBenchConfig:
    data: str = str(DEFAULT_DATA)
    model: str = "default"
    test_fraction: float = 0.2
    split_seed: int = 0
    steps: int = 20
    pairs_per_step: int = 16  # training examples per optimizer step (prefix: one judged step each)
    micro_batch_size: int | None = None  # None: pairs_per_step (no gradient accumulation)
    lr: float = 1e-4
    max_length: int = 256
    freeze_layers: int = 4
    context: str = "prefix"
    read: str = "auto"  # where verdicts are read: auto (the backbone's default) | mask | cls
    step_class_weight: str = "balanced"
    max_rows: int = 0  # 0: every training row; else a seeded sample of that many
    max_questions: int = 0  # 0: every held-out question; else the first N (hash order)
    threshold: float = 0.5
    batch_size: int = 32
    seed: int = 42
    workdir: str = "runs/process-rewards"
    output: str | None = None  # None: <workdir>/results.json


def cap_rows(rows: list[ProcessRow], limit: int, seed: int) -> list[ProcessRow]:
    """A seeded sample of ``limit`` rows in their original order (all of them when limit is 0)."""
    if limit <= 0 or limit >= len(rows):
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def first_questions(rows: list[ProcessRow], limit: int) -> list[ProcessRow]:
    """The rows of the first ``limit`` questions in hash order (all rows when limit is 0)."""
    if limit <= 0:
        return list(rows)
    keep = set(sorted({r.question for r in rows}, key=question_key)[:limit])
    return [r for r in rows if r.question in keep]


def selection(rows: list[ProcessRow], scores: list[list[float]], threshold: float) -> tuple[int, list[dict]]:
    """(questions, rows of selection accuracy) for the baselines and every aggregation."""
    by_row = {id(row): s for row, s in zip(rows, scores)}
    sets = candidate_sets(rows)
    if not sets:
        return 0, []
    out = [{"method": "random", "accuracy": sum(1 / len(c) for c in sets) / len(sets)},
           {"method": "fewest steps", "accuracy": selection_accuracy(sets, [[-len(r.steps) for r in c] for c in sets])}]
    for method in METHODS:
        values = [[aggregate(by_row[id(r)], method, threshold=threshold) for r in c] for c in sets]
        out.append({"method": f"PRM {method}", "accuracy": selection_accuracy(sets, values)})
    return len(sets), out


def run(config: ProcessBenchConfig) -> dict:
    if config.context not in CONTEXTS:
        raise ValueError(f"context must be one of {', '.join(CONTEXTS)}, got {config.context!r}")
    parse_class_weight(config.step_class_weight)  # fail before loading anything
    rows = load_rows([config.data]).rows
    train_rows, test_rows = split_questions(rows, config.test_fraction, seed=config.split_seed)
    if not train_rows or not test_rows:
        raise ValueError(f"the question split left {len(train_rows)} training / {len(test_rows)} test rows; "
                         "change --test-fraction or --split-seed")
    available = len(train_rows)
    train_rows = cap_rows(train_rows, config.max_rows, config.seed)
    test_rows = first_questions(test_rows, config.max_questions)
    workdir = Path(config.workdir)
    train_file = write_rows(train_rows, workdir / "train.jsonl")
    write_rows(test_rows, workdir / "test.jsonl")
    output = workdir / "prm"

    start = time.perf_counter()
    result = train(TrainConfig(
        model=config.model, data=[str(train_file)], output=str(output), objective="process", context=config.context,
        step_class_weight=str(config.step_class_weight), max_steps=config.steps, batch_size=config.pairs_per_step,
        micro_batch_size=config.micro_batch_size or config.pairs_per_step, lr=config.lr,
        max_length=config.max_length, freeze_layers=config.freeze_layers, seed=config.seed, save_steps=0,
        read=config.read))
    train_seconds = time.perf_counter() - start
    extra = json.loads((output / "tinyrm.json").read_text())["extra"]

    rm = ProcessRewardModel.from_pretrained(str(output))
    start = time.perf_counter()
    scores = score_many(rm, [(r.question, r.steps) for r in test_rows], context=config.context,
                        batch_size=config.batch_size)
    score_seconds = time.perf_counter() - start
    questions, selected = selection(test_rows, scores, config.threshold)
    return {
        "config": asdict(config),
        "split": {"train_rows_available": available, "train_rows": len(train_rows), "test_rows": len(test_rows),
                  "test_questions": len({r.question for r in test_rows}), "selection_questions": questions},
        "train": {"steps": result.steps, "examples": result.examples, "seconds": round(train_seconds, 1),
                  "correct_verdicts": extra["result"]["correct_verdicts"],
                  "incorrect_verdicts": extra["result"]["incorrect_verdicts"],
                  "step_class_weight": extra.get("step_class_weight"), "model": str(output)},
        "eval": {"seconds": round(score_seconds, 1), "threshold": config.threshold, "context": config.context,
                 **step_metrics(test_rows, scores, config.threshold)},
        "selection": selected,
    }


def render(results: dict, console: Console) -> None:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    tr, ev, sp = results["train"], results["eval"], results["split"]
    weights = (tr["step_class_weight"] or {}).get("weights")
    shown = "none" if not weights else f"correct {weights['correct']:.3f} / incorrect {weights['incorrect']:.3f}"
    console.print(f"trained {tr['steps']} steps ({tr['examples']} examples) on {sp['train_rows']} of "
                  f"{sp['train_rows_available']} training rows in {tr['seconds']:.0f}s; verdicts "
                  f"{tr['correct_verdicts']} correct / {tr['incorrect_verdicts']} incorrect; class weights {shown}")
    table = Table(title=f"PRM on {sp['test_questions']} held-out questions ({sp['test_rows']} solutions, "
                        f"context {ev['context']}, threshold {ev['threshold']}, scored in {ev['seconds']:.0f}s)")
    for column in ("metric", "value", "n"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    st = ev["steps"]
    table.add_row("step accuracy", fmt(st["accuracy"]), f"{st['n']} ({st['n_incorrect']} incorrect)")
    table.add_row("step balanced accuracy", fmt(st["balanced_accuracy"]), str(st["n"]))
    table.add_row("step AUROC", fmt(st["auroc"]), str(st["n"]))
    table.add_row("first-error-step accuracy", fmt(ev["first_error_accuracy"]), str(ev["first_error_n"]))
    table.add_row("no-error accuracy (correct solutions)", fmt(ev["no_error_accuracy"]), str(ev["no_error_n"]))
    console.print(table)
    table = Table(title=f"Selection accuracy over {sp['selection_questions']} held-out questions "
                        "(reference vs the question's wrong solutions)")
    table.add_column("method")
    table.add_column("selection accuracy", justify="right")
    for row in results["selection"]:
        table.add_row(row["method"], fmt(row["accuracy"]))
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    d = ProcessBenchConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=d.data, help="step-graded JSONL (default: the shared MR-GSM8K file)")
    parser.add_argument("--model", default=d.model, help="masked-LM checkpoint to start from")
    parser.add_argument("--test-fraction", type=float, default=d.test_fraction, help="share of questions held out")
    parser.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the question split")
    parser.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    parser.add_argument("--pairs-per-step", "--examples-per-step", dest="pairs_per_step", type=int,
                        default=d.pairs_per_step,
                        help="training examples per optimizer step (prefix: one judged step; full: one solution)")
    parser.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size,
                        help="examples per forward pass (default: --pairs-per-step)")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--max-length", type=int, default=d.max_length)
    parser.add_argument("--freeze-layers", type=int, default=d.freeze_layers)
    parser.add_argument("--context", default=d.context, choices=list(CONTEXTS), help="train and score in this mode")
    parser.add_argument("--step-class-weight", default=d.step_class_weight, metavar="balanced|none|W")
    parser.add_argument("--read", default=d.read, choices=["auto", "mask", "cls"],
                        help="where verdicts are read (auto: [CLS] on a head-less backbone, prefix context)")
    parser.add_argument("--max-rows", type=int, default=d.max_rows,
                        help="train on a seeded sample of N training rows (0 = all)")
    parser.add_argument("--max-questions", type=int, default=d.max_questions,
                        help="evaluate the first N held-out questions (0 = all)")
    parser.add_argument("--threshold", type=float, default=d.threshold, help="a step below it is flagged")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="scoring batch")
    parser.add_argument("--seed", type=int, default=d.seed, help="training seed (and of --max-rows)")
    parser.add_argument("--workdir", default=d.workdir, help="train.jsonl, test.jsonl and the model (prm/)")
    parser.add_argument("--output", default=None, metavar="results.json", help="default: <workdir>/results.json")
    config = ProcessBenchConfig(**vars(parser.parse_args(argv)))
    results = run(config)
    output = Path(config.output or Path(config.workdir) / "results.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    console = make_console()  # tables at natural width when piped to a log
    render(results, console)
    console.print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
