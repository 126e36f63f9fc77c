"""``--engine local``: one model in this process scores the unfinished chunks in input order.

A chunk is read, judged and written before the next is read, so memory holds one chunk whatever the
input's size; the model is loaded only when some chunk is left to do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .chunk import score_with_retries
from .config import ScoreConfig
from .parts import PartStore
from .readers import Plan, read_unit


def pending_units(plan: Plan, done: set[int]) -> list:
    return [unit for unit in plan.units if any(c not in done for c in unit.chunk_ids(plan.chunk_rows))]


def run_local(config: ScoreConfig, plan: Plan, store: PartStore, on_done: Callable[[dict[str, Any]], None]) -> None:
    done = store.done()
    units = pending_units(plan, done)
    if not units:
        return
    from ..auto import load
    from ..inference.packed import apply_attention
    from ..temperature import use_calibration

    model = apply_attention(load(config.model, device=config.device, precision=config.precision), config.attention)
    use_calibration(model, config.calibrated)
    wanted = {c for unit in units for c in unit.chunk_ids(plan.chunk_rows)} - done
    for unit in units:
        for chunk in read_unit(unit, plan.chunk_rows, config.skip_bad_rows, wanted):
            result = score_with_retries(model, chunk, config)
            store.commit(result.id, result.data, result.counts)
            on_done(result.counts)
