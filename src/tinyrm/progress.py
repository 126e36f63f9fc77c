"""The progress bar of the commands that score many rows (``tinyrm score``, ``tinyrm eval``): tqdm on
stderr, counting rows or pairs and their rate, off with ``--no-progress`` (``enabled=False``).

``progress_bar(total, "eval", " pairs", enabled)`` is a context manager; ``bar.update(n)`` after each
piece scored. stdout stays free for the command's result (a table, or ``--json``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def progress_bar(total: int | None, desc: str, unit: str = " pairs", enabled: bool = True, initial: int = 0) -> Any:
    """A tqdm bar on stderr (``total`` items, ``initial`` of them done already); a silent one when not
    ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)


@contextmanager
def library_bars(enabled: bool) -> Iterator[None]:
    """With ``enabled`` False, also silence the bars transformers and huggingface_hub draw (loading weights,
    downloads) while the block runs: ``--no-progress`` means no bar on stderr at all."""
    if enabled:
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    transformers_on, hub_on = hf_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        if transformers_on:
            hf_logging.enable_progress_bar()
        if hub_on:
            hub_utils.enable_progress_bars()
