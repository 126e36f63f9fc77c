"""Compatibility: ``tinyrm.aggregate`` is :mod:`tinyrm.process.aggregate` (the same module object)."""

import sys

from .process import aggregate

sys.modules[__name__] = aggregate
