"""Before and after ``tinyrm calibrate``: fit the temperature on one split, measure on another.

Runs :func:`tinyrm.evaluation.calibrate.calibrate` on ``--dev`` (writing the calibrated model to
``--calibrated-output``, or to a temporary folder), then scores ``--test`` **once** with the raw
probabilities and reports every figure twice: on the raw P and on ``sigmoid(logit(P) / T)``, which is
exactly what the calibrated model gives (``tests/test_calibration.py`` checks that invariant). One
scoring pass instead of two matters for process models, whose prefix scoring is slow on a CPU.

- pairwise models (any kind): accuracy, ECE, Brier, log loss, and the accuracy of the pairs the model
  is at least 80% / 90% sure of (either way), with their counts;
- process models: per-step ECE / Brier / log loss, step AUROC, first-error accuracy, and for each
  ``--aggregates`` method the solution AUROC, accuracy and ECE, and selection accuracy per question
  (reference vs wrong solutions, as in ``benchmarks/aggregation.py``).

    .venv/bin/python benchmarks/calibration.py --model runs/shared --dev DEV.jsonl --test TEST.jsonl \\
        --calibrated-output runs/shared-cal --output runs/calibration/shared.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tinyrm import load
from tinyrm.cli.output import make_console
from tinyrm.data import load_pairs
from tinyrm.evaluation.calibrate import CalibrateConfig, calibrate
from tinyrm.evaluation.calibration import pair_calibration
from tinyrm.evaluation.evaluate import accepts_domains, pair_probs
from tinyrm.temperature import PROCESS_OBJECTIVES, scale

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def confident_accuracy(probs: list[float], at_least: float) -> dict:
    """Accuracy on the pairs with max(P, 1 - P) >= ``at_least`` (P = P(chosen better))."""
    sure = [p for p in probs if max(p, 1.0 - p) >= at_least]
    return {"n": len(sure), "accuracy": sum(p > 0.5 for p in sure) / len(sure) if sure else None}


def pair_figures(probs: list[float]) -> dict:
    block = pair_calibration(probs)
    return {"accuracy": sum(p > 0.5 for p in probs) / len(probs), "n": len(probs),
            "ece": block["ece"], "brier": block["brier"], "log_loss": block["log_loss"], "calibration": block,
            "sure_80": confident_accuracy(probs, 0.8), "sure_90": confident_accuracy(probs, 0.9)}


def pairwise(rm, test: list[str], batch_size: int, temperature: float) -> dict:
    pairs = load_pairs(test).pairs
    domains = [p.domain for p in pairs] if accepts_domains(rm) else None
    raw = pair_probs(rm, pairs, batch_size=batch_size, progress=True, desc="test", domains=domains, calibrated=False)
    return {"before": pair_figures(raw), "after": pair_figures(scale(raw, temperature))}


def process_figures(rows, sets, scores, set_scores, aggregates: list[str]) -> dict:
    from aggregation import selection_accuracy

    from tinyrm.process.aggregate import aggregate
    from tinyrm.process.evaluation import binary_metrics, step_metrics

    out = step_metrics(rows, scores)
    for method in aggregates:
        solution = [aggregate(s, method) for s in scores]
        if method == "first_error":
            solution = [float(v == len(s)) for v, s in zip(solution, scores)]
        out[f"solutions_{method}"] = binary_metrics(solution, [r.solution_correct for r in rows])
        out[f"selection_{method}"] = selection_accuracy(sets, [[aggregate(s, method) for s in group]
                                                               for group in set_scores])
    return out


def process(rm, test: list[str], batch_size: int, temperature: float, aggregates: list[str]) -> dict:
    from aggregation import candidate_sets

    from tinyrm.process.data import load_rows
    from tinyrm.process.scoring import score_many

    rows = load_rows(test).rows
    raw = score_many(rm, [(r.question, r.steps) for r in rows], batch_size=batch_size, calibrated=False)
    sets = candidate_sets(rows)
    index = {id(r): i for i, r in enumerate(rows)}
    set_raw = [[raw[index[id(r)]] for r in group] for group in sets]
    result = {}
    for name, transform in (("before", lambda s: s), ("after", lambda s: scale(s, temperature))):
        scores = [transform(s) for s in raw]
        set_scores = [[transform(s) for s in group] for group in set_raw]
        result[name] = process_figures(rows, sets, scores, set_scores, aggregates)
    result["questions"] = len(sets)
    return result


def show(document: dict) -> None:
    from rich.table import Table

    def fmt(value) -> str:
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    table = Table(title=f"{document['model']}: T = {document['temperature']:.4g} fitted on {document['dev']}, "
                        f"measured on {document['test']}")
    table.add_column("figure")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    before, after = document["before"], document["after"]
    if "steps" in before:
        rows = [("step " + k, lambda d, k=k: d["steps"]["calibration"][k]) for k in ("ece", "brier", "log_loss")]
        rows += [("step AUROC", lambda d: d["steps"]["auroc"]),
                 ("first-error accuracy", lambda d: d["first_error_accuracy"])]
        for method in document["aggregates"]:
            rows += [(f"{method}: solution AUROC", lambda d, m=method: d[f"solutions_{m}"]["auroc"]),
                     (f"{method}: solution ECE", lambda d, m=method: d[f"solutions_{m}"]["calibration"]["ece"]),
                     (f"{method}: selection accuracy", lambda d, m=method: d[f"selection_{m}"])]
    else:
        rows = [(k, lambda d, k=k: d[k]) for k in ("accuracy", "ece", "brier", "log_loss")]
        for level in ("80", "90"):
            rows.append((f"accuracy where >= {level}% sure (n)",
                         lambda d, lv=level: f"{fmt(d[f'sure_{lv}']['accuracy'])} ({d[f'sure_{lv}']['n']})"))
    for name, get in rows:
        table.add_row(name, fmt(get(before)), fmt(get(after)))
    make_console().print(table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dev", nargs="+", required=True, help="what the temperature is fitted on")
    p.add_argument("--test", nargs="+", required=True, help="what it is measured on (not --dev)")
    p.add_argument("--calibrated-output", default=None, help="keep the calibrated model there")
    p.add_argument("--aggregates", nargs="+", default=["product", "min"], help="process models")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default=None, choices=["auto", "bf16", "fp32", "int8"])
    p.add_argument("--output", default=None, help="the JSON document")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        output = args.calibrated_output or str(Path(scratch) / "calibrated")
        fit = calibrate(CalibrateConfig(model=args.model, data=args.dev, output=output, batch_size=args.batch_size,
                                        precision=args.precision))
    rm = load(args.model, precision=args.precision)
    document = {"model": args.model, "dev": args.dev, "test": args.test, "temperature": fit.temperature,
                "fit": fit.to_dict(), "aggregates": args.aggregates}
    if getattr(rm.config, "objective", "cloze") in PROCESS_OBJECTIVES:
        document.update(process(rm, args.test, args.batch_size, fit.temperature, args.aggregates))
    else:
        document.update(pairwise(rm, args.test, args.batch_size, fit.temperature))
    show(document)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(document, indent=1) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
