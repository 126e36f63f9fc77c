"""The progress bar of the commands that score many rows (``tinyrm score``, ``tinyrm eval``): tqdm on
stderr, counting rows or pairs and their rate, off with ``--no-progress`` (``enabled=False``).

``progress_bar(total, "eval", " pairs", enabled)`` is a context manager; ``bar.update(n)`` after each
piece scored. stdout stays free for the command's result (a table, or ``--json``).
"""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int | None, desc: str, unit: str = " pairs", enabled: bool = True, initial: int = 0) -> Any:
    """A tqdm bar on stderr (``total`` items, ``initial`` of them done already); a silent one when not
    ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)
