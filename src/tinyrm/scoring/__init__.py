"""Scoring and filtering datasets: ``tinyrm score`` and ``tinyrm.score(...)``.

The pipeline reads left to right: ``readers`` (JSONL, Parquet, hub, in numbered chunks) -> ``chunk``
(the model's judgements, ``--min-prob``, ``--keep-best``) -> ``writers`` (part files, then ``OUT``),
with ``parts`` keeping what is finished (resume) and ``job`` running it on an engine: ``local`` (one
process) or ``ray_engine`` (Ray Data, an actor pool with one model per actor). ``rows`` says which
rows are pairs and which are candidate sets; ``sets`` ranks many candidate sets at once.
"""

from __future__ import annotations

from .config import ScoreConfig, ScoreResult
from .job import score

__all__ = ["ScoreConfig", "ScoreResult", "score"]
