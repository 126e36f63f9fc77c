"""``tinyrm calibrate``: fit one temperature on a dev set and save it with the model.

``calibrate(CalibrateConfig(model=M, data=[DEV], output=M2))`` scores DEV with the model's raw
probabilities (P(chosen better) with both orders averaged for a pairwise model of any kind; P(step
correct) on the labelled steps for a process model; P(solution correct) for an outcome model), finds
the temperature T that minimises their log loss (:func:`tinyrm.evaluation.calibration.fit_temperature`)
and writes ``"calibration": {"method": "temperature", "temperature": T, "n", "data", ...}`` into the
``tinyrm.json`` (and the model card) of ``output``: a copy of the model folder, or the model folder
itself when ``output`` is None (in place). From then on the model's probabilities are
``sigmoid(logit(P) / T)`` (:mod:`tinyrm.temperature`). Fitting ignores a temperature saved before, so
calibrating again replaces it.

DEV must not be the data you evaluate on: T is fitted to it, so its log loss there is optimistic.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..auto import load
from ..config import CONFIG_FILE, RewardConfig
from ..data import load_pairs
from ..errors import UsageError
from ..model_card import write_card
from ..progress import progress_bar
from ..temperature import PROCESS_OBJECTIVES, calibration_block, scale
from .calibration import T_MAX, T_MIN, calibration, fit_temperature, pair_calibration
from .evaluate import accepts_domains, pair_probs

ROWS_PER_STEP = 16  # process rows per progress-bar step
_COPY_IGNORE = shutil.ignore_patterns("checkpoint-*")


@dataclass
class CalibrateConfig:
    model: str = "default"
    data: list[str] = field(default_factory=list)  # DEV: pairs (pairwise) or step-graded rows (process, outcome)
    output: str | None = None  # a new folder; None: update the model folder in place
    batch_size: int = 32
    precision: str | None = None  # auto | bf16 | fp32 | int8: fit on the probabilities you will score with
    context: str | None = None  # process models: prefix | full (default: the model's)
    skip_bad_rows: bool = False
    progress: bool = True  # a progress bar on stderr


@dataclass
class CalibrateResult:
    model: str
    output: str
    in_place: bool
    objective: str
    temperature: float
    n: int  # pairs, labelled steps or solutions the fit saw
    unit: str  # pairs | steps | solutions
    data: list[str]
    log_loss_before: float
    log_loss_after: float
    ece_before: float | None
    ece_after: float | None
    seconds: float
    warning: str | None = None  # set when T is at a bound of the search (see bound_warning)

    def to_dict(self) -> dict:
        return asdict(self)


def _pair_points(rm, config: CalibrateConfig) -> tuple[list[float], None, str]:
    pairs = load_pairs(config.data, skip_bad_rows=config.skip_bad_rows).pairs
    domains = [p.domain for p in pairs] if accepts_domains(rm) else None
    probs = pair_probs(rm, pairs, batch_size=config.batch_size, progress=config.progress, desc="calibrate",
                       domains=domains, calibrated=False)
    return probs, None, "pairs"


def _verdict_points(rm, config: CalibrateConfig) -> tuple[list[float], list[bool], str]:
    from ..process.data import load_rows
    from ..process.scoring import outcome_scores, score_many

    rows = load_rows(config.data, skip_bad_rows=config.skip_bad_rows).rows
    outcome = rm.config.objective == "outcome"
    probs: list[float] = []
    outcomes: list[bool] = []
    with progress_bar(len(rows), "calibrate", " rows", enabled=config.progress) as bar:
        for start in range(0, len(rows), ROWS_PER_STEP):
            piece = rows[start : start + ROWS_PER_STEP]
            items = [(r.question, r.steps) for r in piece]
            if outcome:  # the solution verdict
                probs += outcome_scores(rm, items, batch_size=config.batch_size, calibrated=False)
                outcomes += [r.solution_correct for r in piece]
            else:  # every labelled step's verdict
                scores = score_many(rm, items, context=config.context, batch_size=config.batch_size, calibrated=False)
                for row, row_scores in zip(piece, scores):
                    for score, label in zip(row_scores, row.labels):
                        if label is not None:
                            probs.append(score)
                            outcomes.append(bool(label))
            bar.update(len(piece))
    return probs, outcomes, "solutions" if outcome else "steps"


def _target(config: CalibrateConfig) -> tuple[Path, bool]:
    """Where the calibrated model goes, and whether that is the model folder itself."""
    source = Path(config.model)
    saved = (source / CONFIG_FILE).is_file()
    if config.output is None:
        if not saved:
            raise UsageError(f"{config.model!r} is not a saved tinyrm folder (no {CONFIG_FILE}) to update in place; "
                             "give --output DIR")
        return source, True
    output = Path(config.output)
    if saved and output.resolve() == source.resolve():
        return source, True
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UsageError(f"--output {output} exists and is not an empty folder")
    return output, False


def _save(rm, config: CalibrateConfig, block: dict) -> tuple[Path, bool]:
    target, in_place = _target(config)
    if not in_place:
        if (Path(config.model) / CONFIG_FILE).is_file():  # a copy of the folder: weights, adapter, specialists
            shutil.copytree(config.model, target, ignore=_COPY_IGNORE, dirs_exist_ok=True)
        else:  # a hub id, the embedded default or a plain masked LM: saved as a tinyrm folder
            rm.save_pretrained(target)
    saved = RewardConfig.load(target)
    saved.calibration = block
    saved.save(target)
    write_card(target, saved)
    return target, in_place


def bound_warning(temperature: float) -> str | None:
    """What a temperature at a bound of the search means (None inside): the fit kept going, not converged."""
    if abs(math.log(temperature / T_MIN)) < 0.1:
        return (f"T = {temperature:.3g} is the search's lower bound: on this data every probability is on the right "
                "side of 0.5 (or nearly), so the log loss keeps falling as T shrinks and the data cannot say how "
                "sharp to be; check it on held-out data (`tinyrm eval`) or fit on more, harder dev data")
    if abs(math.log(temperature / T_MAX)) < 0.1:
        return (f"T = {temperature:.3g} is the search's upper bound: on this data the model is no better than "
                "chance, so every probability is pulled to 0.5")
    return None


def calibrate(config: CalibrateConfig) -> CalibrateResult:
    """Fit the temperature on ``config.data`` and save the calibrated model (see the module docstring)."""
    if not config.data:
        raise UsageError("--data FILE... is required: the dev set the temperature is fitted on")
    _target(config)  # a bad --output fails before any model time
    started = time.perf_counter()
    rm = load(config.model, precision=config.precision)
    objective = getattr(rm.config, "objective", "cloze")
    process = objective in PROCESS_OBJECTIVES
    probs, outcomes, unit = _verdict_points(rm, config) if process else _pair_points(rm, config)
    if not probs:
        raise UsageError(f"no {'labelled step' if unit == 'steps' else unit[:-1]} in {', '.join(config.data)} "
                         "to fit a temperature on")
    temperature, before, after = fit_temperature(probs, outcomes)
    measure = pair_calibration if outcomes is None else (lambda p: calibration(p, outcomes))
    ece_before, ece_after = measure(probs)["ece"], measure(scale(probs, temperature))["ece"]
    block = calibration_block(temperature, len(probs), config.data, unit=unit, log_loss_before=before,
                              log_loss_after=after, ece_before=ece_before, ece_after=ece_after)
    target, in_place = _save(rm, config, block)
    return CalibrateResult(model=str(config.model), output=str(target), in_place=in_place, objective=objective,
                           temperature=temperature, n=len(probs), unit=unit, data=[str(d) for d in config.data],
                           log_loss_before=before, log_loss_after=after, ece_before=ece_before,
                           ece_after=ece_after, seconds=round(time.perf_counter() - started, 3),
                           warning=bound_warning(temperature))
