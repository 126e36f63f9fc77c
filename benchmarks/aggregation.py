"""Which aggregation of step scores picks the right solution? (Pan et al. 2023's comparison, tiny.)

For each held-out question, the candidate set is its reference solution (correct, split into steps)
plus the graded wrong solutions of the same question from MR-GSM8K. A method "selects" the
highest-scoring candidate; selection accuracy is how often that is the reference (a tie at the
top earns 1/t). Rows: every aggregation function over PRM step scores (prefix and full context),
the ORM's solution verdict, and two model-free baselines (random, fewest steps).

Questions, not rows, are held out: the models are trained on the other questions only.
Default run (CPU): trains a PRM and an ORM for a few steps and scores 40 questions; pass trained
models with ``--prm`` / ``--orm`` and ``--max-questions 0`` for the full held-out split.

    .venv/bin/python benchmarks/aggregation.py                        # bounded default
    .venv/bin/python benchmarks/aggregation.py --prm runs/process/process --orm runs/process/outcome \\
        --max-questions 0 --output runs/aggregation.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tinyrm import ProcessRewardModel
from tinyrm.process.aggregate import METHODS, aggregate
from tinyrm.process.data import ProcessRow, load_rows, question_key, split_questions, write_rows
from tinyrm.process.evaluation import step_metrics
from tinyrm.process.scoring import outcome_scores, score_many
from tinyrm.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "process" / "mrgsm8k-steps.jsonl"


@dataclass
class BenchConfig:
    data: str = str(DEFAULT_DATA)
    test_fraction: float = 0.2
    seed: int = 0
    prm: str | None = None
    orm: str | None = None
    train_steps: int = 4
    max_length: int = 256
    freeze_layers: int = 4
    max_questions: int = 40
    contexts: tuple[str, ...] = ("prefix", "full")
    batch_size: int = 32
    workdir: str = "runs/aggregation-bench"
    output: str | None = None


def candidate_sets(rows: list[ProcessRow]) -> list[list[ProcessRow]]:
    """Per question: reference first, then its wrong solutions; only questions with both."""
    by_question: dict[str, list[ProcessRow]] = defaultdict(list)
    for row in rows:
        by_question[row.question].append(row)
    sets = []
    for question in sorted(by_question, key=question_key):
        group = by_question[question]
        refs = [r for r in group if r.solution_correct]
        wrong = [r for r in group if not r.solution_correct]
        if refs and wrong:
            sets.append(refs[:1] + wrong)
    return sets


def selection_accuracy(sets: list[list[ProcessRow]], scores: list[list[float]]) -> float:
    """Mean credit for picking candidate 0 (the reference); a tie at the top earns 1/t."""
    credit = 0.0
    for values in scores:
        best = max(values)
        top = [i for i, v in enumerate(values) if v == best]
        credit += (0 in top) / len(top)
    return credit / len(sets)


def regroup(flat: list, sets: list[list[ProcessRow]]) -> list[list]:
    out, cursor = [], 0
    for candidates in sets:
        out.append(flat[cursor : cursor + len(candidates)])
        cursor += len(candidates)
    return out


def trained(objective: str, data: Path, config: BenchConfig) -> str:
    output = Path(config.workdir) / objective
    train(TrainConfig(model="default", data=[str(data)], output=str(output), objective=objective,
                      max_steps=config.train_steps, batch_size=16, micro_batch_size=16, lr=1e-4,
                      max_length=config.max_length, freeze_layers=config.freeze_layers, save_steps=0))
    return str(output)


def run(config: BenchConfig) -> dict:
    rows = load_rows([config.data]).rows
    train_rows, test_rows = split_questions(rows, config.test_fraction, seed=config.seed)
    workdir = Path(config.workdir)
    train_file = write_rows(train_rows, workdir / "train.jsonl")
    write_rows(test_rows, workdir / "test.jsonl")
    sets = candidate_sets(test_rows)
    if config.max_questions > 0:
        sets = sets[: config.max_questions]
    flat = [row for candidates in sets for row in candidates]
    items = [(row.question, row.steps) for row in flat]
    results: dict = {"questions": len(sets), "candidates": len(flat), "train_rows": len(train_rows),
                     "test_rows": len(test_rows), "selection": [], "steps": {}}
    chance = sum(1 / len(c) for c in sets) / len(sets)
    results["selection"].append({"method": "random", "context": "-", "accuracy": chance, "seconds": 0.0})
    fewest = [[-len(r.steps) for r in c] for c in sets]
    results["selection"].append({"method": "fewest steps", "context": "-",
                                 "accuracy": selection_accuracy(sets, fewest), "seconds": 0.0})

    prm = ProcessRewardModel.from_pretrained(config.prm or trained("process", train_file, config))
    for context in config.contexts:
        start = time.perf_counter()
        per_step = score_many(prm, items, context=context, batch_size=config.batch_size)
        seconds = time.perf_counter() - start
        results["steps"][f"PRM {context}"] = step_metrics(flat, per_step)
        print(f"PRM {context}: scored {len(items)} candidates in {seconds:.0f}s", flush=True)
        for method in METHODS:
            values = regroup([aggregate(s, method) for s in per_step], sets)
            results["selection"].append({"method": f"PRM {method}", "context": context,
                                         "accuracy": selection_accuracy(sets, values), "seconds": seconds})

    orm = ProcessRewardModel.from_pretrained(config.orm or trained("outcome", train_file, config))
    start = time.perf_counter()
    verdicts = outcome_scores(orm, items, batch_size=config.batch_size)
    results["selection"].append({"method": "ORM", "context": "solution", "seconds": time.perf_counter() - start,
                                 "accuracy": selection_accuracy(sets, regroup(verdicts, sets))})
    print(f"ORM: selection accuracy {results['selection'][-1]['accuracy']:.3f}", flush=True)
    # The ORM asked about each prefix as if the solution ended there: its step-level accuracy.
    results["steps"]["ORM prefix"] = step_metrics(flat, score_many(orm, items, batch_size=config.batch_size))
    results["models"] = {"prm": prm.name, "orm": orm.name}
    return results


def render(results: dict) -> None:
    console = Console()
    table = Table(title=f"Reranking {results['questions']} held-out questions "
                        f"({results['candidates']} candidates: reference + wrong solutions)")
    for column in ("method", "context", "selection accuracy", "scoring s"):
        table.add_column(column, justify="left" if column in ("method", "context") else "right")
    for row in results["selection"]:
        table.add_row(row["method"], row["context"], f"{row['accuracy']:.3f}", f"{row['seconds']:.1f}")
    console.print(table)
    steps = Table(title="Step level on the same candidates (labelled steps only)")
    for column in ("model", "steps", "incorrect", "accuracy", "balanced acc", "AUROC", "first-error acc"):
        steps.add_column(column, justify="left" if column == "model" else "right")
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for name, m in results["steps"].items():
        st = m["steps"]
        steps.add_row(name, str(st["n"]), str(st["n_incorrect"]), fmt(st["accuracy"]), fmt(st["balanced_accuracy"]),
                      fmt(st["auroc"]), fmt(m["first_error_accuracy"]))
    console.print(steps)


def main() -> None:
    d = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=d.data)
    parser.add_argument("--test-fraction", type=float, default=d.test_fraction, help="share of questions held out")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the question split")
    parser.add_argument("--prm", default=None, help="trained process model (default: train one briefly)")
    parser.add_argument("--orm", default=None, help="trained outcome model (default: train one briefly)")
    parser.add_argument("--train-steps", type=int, default=d.train_steps, help="optimizer steps when training here")
    parser.add_argument("--max-length", type=int, default=d.max_length)
    parser.add_argument("--freeze-layers", type=int, default=d.freeze_layers)
    parser.add_argument("--max-questions", type=int, default=d.max_questions, help="0 = every held-out question")
    parser.add_argument("--contexts", nargs="+", default=list(d.contexts), choices=["prefix", "full"])
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--workdir", default=d.workdir)
    parser.add_argument("--output", default=None, metavar="results.json")
    args = parser.parse_args()
    config = BenchConfig(**{k: v for k, v in vars(args).items() if k != "contexts"}, contexts=tuple(args.contexts))
    results = run(config)
    render(results)
    if config.output:
        Path(config.output).parent.mkdir(parents=True, exist_ok=True)
        Path(config.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
