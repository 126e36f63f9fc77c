"""``train(config)``: one entry point for every objective; each kind's trainer lives with the kind.

It fills the defaults for the backbone and device (:mod:`tinyrm.defaults`), then hands the config
to ``tinyrm.pairwise.train`` (cloze), ``tinyrm.pairwise.baselines.train`` (classifier, token) or
``tinyrm.process.train`` (process, outcome). Nothing in the package imports this module except the
CLI and the tools, so the trainers below never import their dispatcher. ``TrainConfig`` and
``TrainResult`` are re-exported from :mod:`tinyrm.training.config` for ``from tinyrm.train import ...``.
"""

from __future__ import annotations

from collections.abc import Callable

from .defaults import resolve_defaults
from .pairwise.baselines.train import train as train_baseline
from .pairwise.train import train as train_cloze
from .process.train import train as train_process
from .training.arguments import check_length, is_main_process
from .training.config import TrainConfig, TrainResult

__all__ = ["OBJECTIVES", "TrainConfig", "TrainResult", "train"]

TRAINERS: dict[str, Callable[[TrainConfig], TrainResult]] = {
    "cloze": train_cloze,
    "classifier": train_baseline,
    "token": train_baseline,
    "process": train_process,
    "outcome": train_process,
}
# ``route`` bundles are built from trained specialists by `tinyrm route`, never trained here.
OBJECTIVES = (*TRAINERS, "route")


def train(config: TrainConfig) -> TrainResult:
    """Train a reward model on ``config.data`` and save it to ``config.output``."""
    check_length(config)  # before any data is read or model loaded, whatever the objective
    config = resolve_defaults(config, announce=is_main_process())
    if config.objective == "route":
        raise ValueError("objective 'route' is not trained by `tinyrm train`; build a bundle with "
                         "`tinyrm route --specialists chat=DIR reasoning=DIR safety=DIR --data FILE... --output OUT`")
    if config.objective not in TRAINERS:
        raise ValueError(f"unknown objective {config.objective!r}; choose from {sorted(OBJECTIVES)}")
    if config.eval_data and config.objective != "cloze":
        raise ValueError(f"--eval-data scores a cloze model during training; objective {config.objective!r} "
                         "has no such hook (train, then `tinyrm eval --model OUT --data FILE`)")
    return TRAINERS[config.objective](config)
