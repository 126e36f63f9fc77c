"""tinyrm: small masked language models as fast, accurate reward models.

``tinyrm.load(path)`` loads any saved model as its kind's class: ``RewardModel`` (pairwise cloze),
``ProcessRewardModel`` (per-step verdicts), the classifier / token baselines or a routed bundle.
``tinyrm.score(ScoreConfig(...))`` scores and filters a dataset (``tinyrm score``, :mod:`tinyrm.scoring`).
"""

from __future__ import annotations

from ._version import __version__
from .auto import AutoRewardModel, load
from .config import RewardConfig
from .pairwise.model import RewardModel
from .process.model import ProcessRewardModel
from .scoring import ScoreConfig, score

__all__ = ["AutoRewardModel", "ProcessRewardModel", "RewardConfig", "RewardModel", "ScoreConfig", "__version__", "load",
           "score"]
