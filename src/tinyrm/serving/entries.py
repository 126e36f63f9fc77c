"""The batcher's line (``batching.MicroBatcher``): a queued request, its units in the order its slices are cut
(longest first), how far it got, its deadline's cap on the wait for company; and a slice of it in a call."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field


def _size(item) -> int:
    """A unit's length, to cut a request's slices from similar lengths: a pair's characters, a sequence's tokens."""
    ids = getattr(item, "input_ids", None)
    return len(ids) if ids is not None else sum(len(t) for t in item)


@dataclass(eq=False)
class QueuedRequest:
    items: list  # pairs (prompt, a, b), step sequences (kind "steps") or (prompt, response) (kind "rewards")
    both_orders: bool | None
    future: asyncio.Future
    arrived: float
    kind: str = "pairs"  # pairs: compare_batch; steps: verdicts (a list per sequence); rewards: score_batch
    patience: float = math.inf  # the loop time until which its call may wait for company
    results: list = field(default_factory=list)
    order: list[int] = field(default_factory=list)  # the items in the order their slices are cut
    next: int = 0  # pairs handed to the model so far
    scored: int = 0  # pairs answered so far

    def __post_init__(self) -> None:
        self.results = [0.0] * len(self.items)
        # Slices of similar lengths: the engine length-sorts only within a call, so slicing a large request in
        # input order would pad each call's passes to mixed lengths (answers go back to input order).
        self.order = sorted(range(len(self.items)), key=lambda i: -_size(self.items[i]))

    @property
    def key(self) -> tuple[str, bool | None]:
        """Requests with the same key share forward calls."""
        return self.kind, self.both_orders

    def pairs(self, start: int, stop: int) -> list:
        return [self.items[i] for i in self.order[start:stop]]

    @property
    def alive(self) -> bool:
        return not self.future.done()

    @property
    def waiting(self) -> int:
        """Pairs not yet handed to the model."""
        return len(self.items) - self.next


@dataclass
class Slice:
    request: QueuedRequest
    start: int
    stop: int
