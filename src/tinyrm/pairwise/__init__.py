"""The pairwise kind: P(a better than b) for a prompt and two responses.

``model`` (``RewardModel``, ``ClozeScorer``: the FLAN-cloze reward model), ``data`` (its training
examples and batches), ``train`` (the cloze objective), ``rank`` (best-of-n tournaments over any
pairwise scorer), ``route`` (specialists behind a domain router) and ``baselines/`` (classifier and
token-level objectives, each response scored on its own).
"""

from .model import ClozeScorer, RewardModel

__all__ = ["ClozeScorer", "RewardModel"]
