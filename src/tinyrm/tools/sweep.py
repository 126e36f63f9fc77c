"""Bayesian hyperparameter search (Optuna TPE), as the paper tuned its specialists.

Search space: learning rate (log-uniform 1e-7..1e-4), DoRA rank {0, 8, 16, 32, 64, 128} (0 = full
fine-tuning), frozen layers 0..L-1 and the instruction prefix pool. Objective: pairwise accuracy on
``--eval-data``. Trials live in an RDB storage (SQLite by default) so an interrupted sweep resumes
where it stopped; each trial writes ``trials/trial-NNNN.json`` (config, training result,
evaluation); the best configuration is written as a recipe (``best-recipe.json``, usable with
``tinyrm train --recipe``) next to PNG plots of the optimisation history and parameter importance.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data import PreferencePair, load_pairs
from ..prompt import DOMAIN_PREFIXES, PAPER_PREFIXES

logger = logging.getLogger(__name__)

DORA_RANKS = (0, 8, 16, 32, 64, 128)
LR_RANGE = (1e-7, 1e-4)
PREFIX_POOL: list[str] = list(dict.fromkeys([*PAPER_PREFIXES.values(), *DOMAIN_PREFIXES.values()]))
_MODEL_FILES = ("model.safetensors", "pytorch_model.bin", "adapter")


@dataclass
class SweepConfig:
    data: list[str]
    eval_data: list[str]
    trials: int = 20  # total completed trials wanted (a resumed study counts its earlier ones)
    storage: str | None = None  # default sqlite:///<output>/sweep.db
    study_name: str = "tinyrm-sweep"
    model: str = "default"
    output: str = "runs/sweep"
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 32
    micro_batch_size: int = 16
    max_length: int = 256
    eval_batch_size: int = 64
    max_pairs: int | None = None  # seeded subsample of --data (quick sweeps)
    max_eval_pairs: int | None = None
    startup_trials: int | None = None  # random trials before TPE takes over
    seed: int = 42
    keep_models: bool = False
    prefixes: list[str] = field(default_factory=lambda: list(PREFIX_POOL))


@dataclass
class SweepSummary:
    study_name: str
    storage: str
    completed: int
    best_number: int
    best_accuracy: float
    best_params: dict
    recipe: str
    plots: list[str]


def num_layers(model: str) -> int:
    from transformers import AutoConfig

    from ..backbone import check_model_source, model_load_errors

    with model_load_errors(model):
        config = AutoConfig.from_pretrained(check_model_source(model))
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None)
    if not layers:
        raise ValueError(f"{model}: cannot read the number of layers from its config")
    return int(layers)


def suggest(trial, n_layers: int, prefixes: Sequence[str]) -> dict:
    """One point of the search space (the issue's ranges)."""
    return {
        "lr": trial.suggest_float("lr", *LR_RANGE, log=True),
        "dora_rank": trial.suggest_categorical("dora_rank", list(DORA_RANKS)),
        "freeze_layers": trial.suggest_int("freeze_layers", 0, n_layers - 1),
        "prefix": trial.suggest_categorical("prefix", list(prefixes)),
    }


def subsample(pairs: list[PreferencePair], limit: int | None, seed: int) -> list[PreferencePair]:
    if limit is None or limit >= len(pairs):
        return pairs
    return random.Random(seed).sample(pairs, limit)


def write_pairs(pairs: Sequence[PreferencePair], path: Path) -> str:
    from .synthetic import write_jsonl

    return str(write_jsonl(list(pairs), path))


def default_storage(output: Path) -> str:
    return f"sqlite:///{(output / 'sweep.db').resolve()}"


def open_study(config: SweepConfig, storage_url: str):
    import inspect

    import optuna
    from optuna import storages

    # Heartbeats mark trials of a killed process as failed (and retry them once) on resume.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if "heartbeat_stale_trial_callback" in inspect.signature(storages.RDBStorage.__init__).parameters:
            retry = {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
        else:  # optuna < 4.9
            retry = {"failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=1)}
        storage = storages.RDBStorage(storage_url, heartbeat_interval=60, grace_period=180, **retry)
    study = optuna.create_study(study_name=config.study_name, storage=storage, direction="maximize",
                                load_if_exists=True)
    # Seeded past the trials already stored: a resumed run reseeded with config.seed alone would draw
    # the same random startup points again.
    startup = config.startup_trials if config.startup_trials is not None else min(10, max(2, config.trials // 3))
    study.sampler = optuna.samplers.TPESampler(seed=config.seed + len(study.trials), n_startup_trials=startup)
    return study


def make_objective(config: SweepConfig, train_files: list[str], eval_pairs: list[PreferencePair], n_layers: int):
    from ..auto import load
    from ..evaluation.evaluate import evaluate_pairs
    from ..train import train
    from ..training.config import TrainConfig

    trials_dir = Path(config.output) / "trials"

    def objective(trial) -> float:
        params = suggest(trial, n_layers, config.prefixes)
        run_dir = trials_dir / f"trial-{trial.number:04d}"
        train_config = TrainConfig(
            # The sweep searches the paper's cloze settings (prefix, freezing, DoRA), whatever the backbone.
            model=config.model, data=train_files, output=str(run_dir), objective="cloze", epochs=config.epochs,
            max_steps=config.max_steps, batch_size=config.batch_size, micro_batch_size=config.micro_batch_size,
            max_length=config.max_length, seed=config.seed, save_steps=0, **params,
        )
        result = train(train_config)
        rm = load(str(run_dir))
        results = evaluate_pairs(rm, eval_pairs, batch_size=config.eval_batch_size)
        record = {"number": trial.number, "params": params, "accuracy": results["accuracy"],
                  "train_config": asdict(train_config), "train_result": asdict(result), "eval": results}
        (trials_dir / f"trial-{trial.number:04d}.json").write_text(json.dumps(record, indent=2) + "\n")
        trial.set_user_attr("train_config", asdict(train_config))
        trial.set_user_attr("domains", {k: v["accuracy"] for k, v in results["domains"].items()})
        if not config.keep_models:  # keep the record and metrics, not the weights
            for name in _MODEL_FILES:
                target = run_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        return results["accuracy"]

    return objective


def save_plots(study, output: Path) -> list[str]:
    """Optimisation history and parameter importance PNGs (importance needs 2+ varied trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in (("history.png", ovm.plot_optimization_history),
                           ("importance.png", ovm.plot_param_importances)):
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                logger.warning("skipping %s: %s", name, error)
                continue
            figure = ax.figure if hasattr(ax, "figure") else ax[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(output / name, dpi=110)
            plt.close(figure)
            written.append(str(output / name))
    return written


def write_best_recipe(study, config: SweepConfig, output: Path) -> str:
    from ..training.recipes import Recipe, write_recipe

    best = study.best_trial
    train_config = best.user_attrs.get("train_config", {})
    keep = ("model", "lr", "dora_rank", "freeze_layers", "prefix", "epochs", "batch_size", "max_length",
            "weight_decay", "template", "loss")
    recipe = Recipe(
        name=f"{config.study_name}-best",
        config={k: train_config[k] for k in keep if k in train_config} or dict(best.params),
        description=f"best of {len(completed_trials(study))} sweep trials: trial {best.number}, "
                    f"eval accuracy {best.value:.4f} on {', '.join(config.eval_data)}",
        source=f"tinyrm sweep, study {config.study_name!r}",
    )
    return str(write_recipe(output / "best-recipe.json", recipe))


def completed_trials(study) -> list:
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def failed_trials(study) -> list:
    """Trials that ended without a value (pruned ones too, so the loop below always makes progress)."""
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED))


def run_trials(study, objective, target: int, on_trial=None) -> None:
    """Run trials until ``target`` are complete: a failed trial (a RuntimeError such as CUDA OOM) is
    replaced, not counted. Gives up once ``target`` trials have failed in this run, so a failure that
    hits every configuration cannot loop for ever; re-running the command continues from there."""
    callbacks = [on_trial] if on_trial else []
    failed_before = len(failed_trials(study))
    while (remaining := target - len(completed_trials(study))) > 0:
        failed = len(failed_trials(study)) - failed_before
        if failed >= target:
            logger.warning("stopping: %d trials failed in this run; %d of %d completed", failed,
                           target - remaining, target)
            return
        study.optimize(objective, n_trials=min(remaining, target - failed), show_progress_bar=True,
                       callbacks=callbacks, catch=(RuntimeError,))


def run_sweep(config: SweepConfig, on_trial=None) -> SweepSummary:
    """Run (or resume) the study until ``config.trials`` trials are complete."""
    if config.trials < 1:
        raise ValueError("--trials must be at least 1")
    if not config.eval_data:
        raise ValueError("--eval-data FILE... is required: the objective is eval accuracy")
    output = Path(config.output)
    (output / "trials").mkdir(parents=True, exist_ok=True)
    n_layers = num_layers(config.model)

    train_files = list(config.data)
    if config.max_pairs is not None:
        train_pairs = subsample(load_pairs(config.data).pairs, config.max_pairs, config.seed)
        train_files = [write_pairs(train_pairs, output / "train-subset.jsonl")]
    eval_pairs = subsample(load_pairs(config.eval_data).pairs, config.max_eval_pairs, config.seed + 1)
    if not eval_pairs:
        raise ValueError("--eval-data holds no pairs")

    storage_url = config.storage or default_storage(output)
    study = open_study(config, storage_url)
    run_trials(study, make_objective(config, train_files, eval_pairs, n_layers), config.trials, on_trial)
    done = completed_trials(study)
    if not done:
        raise RuntimeError("no trial completed; see the errors above")
    best = study.best_trial
    summary = SweepSummary(
        study_name=config.study_name, storage=storage_url, completed=len(done), best_number=best.number,
        best_accuracy=float(best.value), best_params=dict(best.params),
        recipe=write_best_recipe(study, config, output), plots=save_plots(study, output),
    )
    trials = [{"number": t.number, "state": t.state.name, "accuracy": t.value, "params": t.params}
              for t in study.get_trials(deepcopy=False)]
    (output / "sweep.json").write_text(json.dumps({"summary": asdict(summary), "trials": trials}, indent=2) + "\n")
    return summary
