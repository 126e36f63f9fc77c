"""Evaluating process and outcome models: step accuracy / AUROC, first-error step, solution verdicts, and the
calibration of step and solution probabilities (``calibration`` in ``steps`` and ``solutions``:
:mod:`tinyrm.evaluation.calibration`, each verdict counted once as (P(correct), correct or not))."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..evaluation.calibration import calibration
from ..evaluation.results import write_results
from ..inference.packed import apply_attention
from ..inference.precision import apply_precision, check_precision
from ..temperature import model_temperature, use_calibration
from .aggregate import aggregate as combine
from .aggregate import check_method
from .data import ProcessRow, load_rows
from .model import ProcessRewardModel
from .scoring import resolve_context, score_many, solution_reward, solution_scores


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``; ties count half); None without
    both classes."""
    labels = [bool(p) for p in positives]
    if all(labels) or not any(labels):
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, [float(s) for s in scores]))


def binary_metrics(scores: Sequence[float], positives: Sequence[bool], threshold: float = 0.5) -> dict:
    """Accuracy, balanced accuracy, AUROC and calibration of P(correct) against labels (None where
    nothing is labelled: no figure rather than 0)."""
    predicted = [s >= threshold for s in scores]
    hits_pos = sum(p and y for p, y in zip(predicted, positives))
    hits_neg = sum((not p) and (not y) for p, y in zip(predicted, positives))
    n_pos = sum(bool(y) for y in positives)
    n_neg = len(positives) - n_pos
    recalls = [r for r in (hits_pos / n_pos if n_pos else None, hits_neg / n_neg if n_neg else None) if r is not None]
    return {"n": len(positives), "n_correct": n_pos, "n_incorrect": n_neg,
            "accuracy": (hits_pos + hits_neg) / len(positives) if positives else None,
            "balanced_accuracy": sum(recalls) / len(recalls) if recalls else None,
            "auroc": auroc(scores, positives), "calibration": calibration(scores, [bool(y) for y in positives])}


@dataclass
class ProcessEvalConfig:
    model: str = "default"
    data: list[str] = field(default_factory=list)
    objective: str = "process"  # process: step level; outcome: solution level
    context: str | None = None
    aggregate: str = "min"
    threshold: float = 0.5
    batch_size: int = 32
    max_length: int | None = None
    skip_bad_rows: bool = False
    output: str | None = None
    calibrated: bool = True  # False: the raw probabilities even where tinyrm.json holds a temperature
    # The scoring engine's settings (rm.engine.config; None: the model's): auto | bf16 | fp32 | int8 and
    # auto | packed | padded (docs/process.md#speed-the-scoring-engine)
    precision: str | None = None
    attention: str | None = None
    max_batch_tokens: int | None = None  # rm.engine.config.max_batch_tokens for the verdicts (None: the model's)


def evaluate_steps(rm: ProcessRewardModel, rows: Sequence[ProcessRow], context: str | None = None,
                   threshold: float = 0.5, batch_size: int = 32) -> dict:
    """Step-level accuracy / AUROC on labelled steps, first-error-step accuracy on graded wrong
    solutions, and "no step flagged" accuracy on correct ones."""
    scores = score_many(rm, [(r.question, r.steps) for r in rows], context=context, batch_size=batch_size)
    return step_metrics(rows, scores, threshold)


def step_metrics(rows: Sequence[ProcessRow], scores: Sequence[Sequence[float]], threshold: float = 0.5) -> dict:
    """The metrics of :func:`evaluate_steps` from already computed step scores."""
    step_scores, step_labels_ = [], []
    for row, row_scores in zip(rows, scores):
        for score, label in zip(row_scores, row.labels):
            if label is not None:
                step_scores.append(score)
                step_labels_.append(label)
    located = [(row, s) for row, s in zip(rows, scores) if row.first_error is not None]
    clean_rows = [(row, s) for row, s in zip(rows, scores) if row.solution_correct]
    first = [combine(s, "first_error", threshold) == row.first_error for row, s in located]
    no_error = [combine(s, "first_error", threshold) == len(s) for _, s in clean_rows]
    return {
        "steps": binary_metrics(step_scores, step_labels_, threshold),
        "first_error_accuracy": sum(first) / len(first) if first else None, "first_error_n": len(first),
        "no_error_accuracy": sum(no_error) / len(no_error) if no_error else None, "no_error_n": len(no_error),
    }


def evaluate_solutions(rm: ProcessRewardModel, rows: Sequence[ProcessRow], aggregate: str = "min",
                       context: str | None = None, threshold: float = 0.5, batch_size: int = 32,
                       step_scores: Sequence[Sequence[float]] | None = None) -> dict:
    """Solution-level metrics; ``step_scores``: the rows' step scores already computed (``score_many``, same
    context), turned into rewards by ``solution_reward`` instead of scoring again (an outcome model's: its last
    step's verdict, the sequence ``outcome_scores`` would read; rows always have a step)."""
    if step_scores is not None:
        scores = [solution_reward(rm, s, aggregate, threshold) for s in step_scores]
    else:
        scores = solution_scores(rm, [(r.question, r.steps) for r in rows], aggregate=aggregate, context=context,
                                 threshold=threshold, batch_size=batch_size)
    # A step count: "no step flagged" is the positive verdict (an outcome model's score is its verdict whatever
    # the aggregate).
    if aggregate == "first_error" and rm.spec.objective != "outcome":
        scores = [float(s == len(r.steps)) for s, r in zip(scores, rows)]
    return {"solutions": binary_metrics(scores, [r.solution_correct for r in rows], threshold)}


def evaluate(config: ProcessEvalConfig) -> dict:
    check_method(config.aggregate)  # before any row is read or step scored
    rows = load_rows(config.data, skip_bad_rows=config.skip_bad_rows).rows
    rm = use_calibration(ProcessRewardModel.from_pretrained(config.model, max_length=config.max_length),
                         config.calibrated)
    apply_attention(apply_precision(rm, check_precision(config.precision, rm.device)), config.attention)
    if config.max_batch_tokens is not None:
        rm.engine.config.max_batch_tokens = config.max_batch_tokens
    s = rm.spec
    context = resolve_context(s, config.context)
    results: dict = {"model": rm.name, "model_objective": s.objective, "evaluation": config.objective,
                     "context": context, "threshold": config.threshold, "rows": len(rows)}
    if (temperature := model_temperature(rm, kind="step")) is not None:  # verdicts calibrated with it
        results["temperature"] = temperature
    step_scores = None
    if config.objective == "process":  # scored once: the solution metrics aggregate the same step scores
        step_scores = score_many(rm, [(r.question, r.steps) for r in rows], context=context,
                                 batch_size=config.batch_size)
        results.update(step_metrics(rows, step_scores, config.threshold))
    results.update(evaluate_solutions(rm, rows, config.aggregate, context, config.threshold, config.batch_size,
                                      step_scores))
    results["aggregate"] = "orm" if s.objective == "outcome" else config.aggregate
    if config.output:
        write_results(results, config.output)
    return results


def results_table(results: dict):
    from rich.table import Table

    table = Table(title=f"tinyrm eval --objective {results['evaluation']}: {results['model']} "
                        f"({results['model_objective']} model, context {results['context']}"
                        + (f", calibrated: temperature {results['temperature']:.4g})" if results.get("temperature")
                           else ")"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("n", justify="right")

    def fmt(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    if "steps" in results:
        st = results["steps"]
        table.add_row("step accuracy", fmt(st["accuracy"]), f"{st['n']} ({st['n_incorrect']} incorrect)")
        table.add_row("step balanced accuracy", fmt(st["balanced_accuracy"]), str(st["n"]))
        table.add_row("step AUROC", fmt(st["auroc"]), str(st["n"]))
        _calibration_rows(table, "step", st.get("calibration"), st["n"])
        table.add_row("first-error-step accuracy", fmt(results["first_error_accuracy"]), str(results["first_error_n"]))
        table.add_row("no-error accuracy (correct solutions)", fmt(results["no_error_accuracy"]),
                      str(results["no_error_n"]))
    so = results["solutions"]
    label = f"solution ({results['aggregate']})"
    table.add_row(f"{label} accuracy", fmt(so["accuracy"]), f"{so['n']} ({so['n_correct']} correct)")
    table.add_row(f"{label} AUROC", fmt(so["auroc"]), str(so["n"]))
    _calibration_rows(table, label, so.get("calibration"), so["n"])
    return table


def _calibration_rows(table, label: str, entry: dict | None, n: int) -> None:
    for key, name in (("ece", "ECE"), ("brier", "Brier"), ("log_loss", "log loss")):
        value = (entry or {}).get(key)
        table.add_row(f"{label} {name}", "-" if value is None else f"{value:.4f}", str(n))
