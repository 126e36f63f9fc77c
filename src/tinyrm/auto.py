"""``tinyrm.load(path)`` / ``AutoRewardModel.from_pretrained(path)``: the saved ``tinyrm.json`` picks the class.

- ``cloze`` (and a folder without ``tinyrm.json``, i.e. a plain masked LM): ``pairwise.model.RewardModel``
- ``classifier``, ``token``: ``pairwise.baselines.model.BaselineRewardModel``
- ``process``, ``outcome``: ``process.model.ProcessRewardModel``
- ``route``: ``pairwise.route.RoutedRewardModel``

This is the one module that imports every kind; none of them imports it. It fills
``tinyrm.config.MODEL_CLASSES``, through which ``RewardModel.from_pretrained`` hands another kind's
folder to that kind's class, as it always has.
"""

from __future__ import annotations

from .backbone import default_device, resolve_model_path
from .config import MODEL_CLASSES, model_class, saved_objective
from .inference.precision import apply_precision, check_precision
from .pairwise.baselines.model import BaselineRewardModel
from .pairwise.model import RewardModel
from .pairwise.route import RoutedRewardModel
from .process.model import ProcessRewardModel

MODEL_CLASSES.update({
    "cloze": RewardModel,
    "classifier": BaselineRewardModel,
    "token": BaselineRewardModel,
    "process": ProcessRewardModel,
    "outcome": ProcessRewardModel,
    "route": RoutedRewardModel,
})

AnyRewardModel = RewardModel | ProcessRewardModel | BaselineRewardModel | RoutedRewardModel


def load(path_or_id: str = "default", device: str | None = None, precision: str | None = None,
         **overrides) -> AnyRewardModel:
    """A saved tinyrm model of any kind, or any masked-LM checkpoint as a pairwise ``RewardModel``.

    ``overrides`` are the loading options of that kind's ``from_pretrained`` (``max_length``,
    ``template``, ``prefix``, ``context``, ...; ``None`` values are ignored). ``precision`` (auto |
    bf16 | fp32 | int8) sets the scoring precision of models with the inference engine (int8: CPU only,
    refused for a CUDA device before anything is loaded; ``tinyrm.inference.precision``).
    """
    check_precision(precision, device or default_device())
    objective = saved_objective(resolve_model_path(path_or_id))
    return apply_precision(model_class(objective).from_pretrained(path_or_id, device=device, **overrides), precision)


class AutoRewardModel:
    """``AutoRewardModel.from_pretrained(path)``: :func:`load` in the transformers spelling."""

    def __init__(self) -> None:
        raise TypeError("AutoRewardModel is not instantiated: use AutoRewardModel.from_pretrained(path)")

    @staticmethod
    def from_pretrained(path_or_id: str = "default", device: str | None = None, precision: str | None = None,
                        **overrides) -> AnyRewardModel:
        return load(path_or_id, device=device, precision=precision, **overrides)
