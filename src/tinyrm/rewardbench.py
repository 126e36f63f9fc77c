"""Compatibility: ``tinyrm.rewardbench`` is :mod:`tinyrm.evaluation.rewardbench` (the same module object)."""

import sys

from .evaluation import rewardbench

sys.modules[__name__] = rewardbench
