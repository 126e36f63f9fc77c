"""Compatibility: ``tinyrm.steps`` is :mod:`tinyrm.process.steps` (the same module object)."""

import sys

from .process import steps

sys.modules[__name__] = steps
