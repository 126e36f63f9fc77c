"""Micro-batching: concurrent requests merged into one ``compare_batch`` call on a single model thread.

Requests are queued and merged (up to ``max_batch_size`` pairs, or whatever arrived within
``max_wait_ms`` of the oldest request). The model runs in one dedicated worker thread, so the event
loop keeps answering ``/health`` while a batch is being scored, and two batches never share the
model at once.

Shutdown (``stop``, the app's lifespan end) refuses new work (``RuntimeError``, a 503), finishes what
is queued or being scored, then stops the loop; a request whose client went away (its future
cancelled) is dropped from the queue and never poisons the batch it was merged into.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    items: list[tuple[str, str, str]]
    both_orders: bool | None
    future: asyncio.Future
    arrived: float


@dataclass
class BatchStats:
    """Counters exposed in /health so batching can be observed (and tested)."""

    batches: int = 0
    requests: int = 0
    pairs: int = 0
    max_batch_requests: int = 0
    max_batch_pairs: int = 0
    requests_per_batch: Counter = field(default_factory=Counter)
    busy_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches, "requests": self.requests, "pairs": self.pairs,
            "max_batch_requests": self.max_batch_requests, "max_batch_pairs": self.max_batch_pairs,
            "requests_per_batch": {str(k): v for k, v in sorted(self.requests_per_batch.items())},
            "busy_seconds": round(self.busy_seconds, 3),
        }


def default_forward_batch(rm, max_batch_size: int) -> int:
    """Rows per forward pass: the whole micro-batch (both orders) on a GPU; 8 on a CPU, where wide
    padded batches were measured slower than small length-sorted ones (docs/ranking-and-serving.md, load benchmark)."""
    device = getattr(rm, "device", None)
    if getattr(device, "type", "cpu") == "cpu":
        return 8
    return 2 * max_batch_size


class MicroBatcher:
    """Merges queued ``compare_batch`` requests and runs them on a single model thread."""

    def __init__(self, rm, max_batch_size: int, max_wait_ms: float, forward_batch_size: int | None = None) -> None:
        self.rm = rm
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.forward_batch_size = forward_batch_size or default_forward_batch(rm, max_batch_size)
        # Requests that leave both_orders to the model share batches with those that spell it out.
        self.default_both_orders = getattr(getattr(rm, "config", None), "both_orders", None)
        self.stats = BatchStats()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinyrm-model")
        self._pending: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.busy = False
        self.closing = False
        self._batch: list[_Pending] = []  # the batch being scored (stop() fails it if it cannot finish)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="tinyrm-batcher")

    async def stop(self, drain_s: float = 30.0) -> None:
        """Refuse new requests, finish the queued and running ones (up to ``drain_s``), stop the loop.

        Under uvicorn the lifespan ends after every connection closed, so the queue is empty by now;
        the drain keeps queued work from being dropped where the host does not wait (and for
        ``BatchedScorer`` threads still submitting). What is left after ``drain_s`` gets an error."""
        self.closing = True
        if self._wakeup is not None:
            self._wakeup.set()  # a queued request waiting for company goes now
        running: list[_Pending] = []
        if self._task and not self._task.done():
            deadline = time.monotonic() + drain_s
            while (self.queued or self.busy) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            running = self._batch  # cancelling the loop below forgets the batch it was scoring
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for entry in [*running, *self._pending]:
            if not entry.future.done():
                entry.future.set_exception(RuntimeError("server is shutting down"))
        self._pending.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not counting those whose client went away)."""
        return sum(1 for e in self._pending if not e.future.done())

    async def submit(self, items: list[tuple[str, str, str]], both_orders: bool | None = None) -> list[float]:
        if not items:
            return []
        assert self.loop is not None and self._wakeup is not None, "batcher not started"
        if self.closing:
            raise RuntimeError("server is shutting down")
        if both_orders is None:
            both_orders = self.default_both_orders
        future = self.loop.create_future()
        self._pending.append(_Pending(items, both_orders, future, self.loop.time()))
        self._wakeup.set()
        return await future

    async def run_model(self, fn: Callable, *args, **kwargs):
        """Run any model call on the model thread (never concurrently with a batch)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def _queued_pairs(self, key: bool | None) -> int:
        return sum(len(e.items) for e in self._pending if e.both_orders == key and not e.future.done())

    def _take_batch(self) -> list[_Pending]:
        """The oldest request plus later ones with the same ``both_orders`` that still fit, in order."""
        first = self._pending.popleft()
        batch, size, kept = [first], len(first.items), deque()
        while self._pending:
            entry = self._pending.popleft()
            if entry.both_orders == first.both_orders and size + len(entry.items) <= self.max_batch_size:
                batch.append(entry)
                size += len(entry.items)
            else:
                kept.append(entry)
        self._pending = kept
        return [e for e in batch if not e.future.done()]  # drop requests whose client went away

    async def _run(self) -> None:
        assert self._wakeup is not None and self.loop is not None
        while True:
            # Requests whose client went away while queued (future cancelled) leave the queue here.
            self._pending = deque(e for e in self._pending if not e.future.done())
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            first = self._pending[0]
            # Wait for company until the batch is full or the oldest request has waited max_wait
            # (none comes once stop() began).
            while not self.closing and self._queued_pairs(first.both_orders) < self.max_batch_size:
                remaining = first.arrived + self.max_wait - self.loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:  # noqa: UP041 - distinct from TimeoutError on 3.10
                    break
            try:
                batch = self._take_batch()
                if batch:
                    await self._score(batch)
            except Exception:  # the batcher must outlive any single bad batch
                logger.exception("batcher iteration failed")

    async def _score(self, batch: list[_Pending]) -> None:
        items = [item for entry in batch for item in entry.items]
        both = batch[0].both_orders
        rows = self.forward_batch_size
        started = time.perf_counter()
        self.busy = True
        self._batch = batch
        try:
            probs = await self.loop.run_in_executor(
                self.executor, lambda: self.rm.compare_batch(items, batch_size=rows, both_orders=both)
            )
        except Exception as error:  # a failing batch fails its requests, never the server
            logger.exception("batch of %d pairs failed", len(items))
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(error)
            return
        finally:
            self.busy = False
            self._batch = []
            self.stats.busy_seconds += time.perf_counter() - started
        s = self.stats
        s.batches += 1
        s.requests += len(batch)
        s.pairs += len(items)
        s.max_batch_requests = max(s.max_batch_requests, len(batch))
        s.max_batch_pairs = max(s.max_batch_pairs, len(items))
        s.requests_per_batch[len(batch)] += 1
        start = 0
        for entry in batch:
            chunk = [float(p) for p in probs[start : start + len(entry.items)]]
            start += len(entry.items)
            if not entry.future.done():
                entry.future.set_result(chunk)


class BatchedScorer:
    """A scorer for ``tinyrm.pairwise.rank`` running in a worker thread: its comparisons go through the batcher."""

    def __init__(self, batcher: MicroBatcher, timeout_s: float) -> None:
        self.batcher = batcher
        self.timeout_s = timeout_s

    def compare_batch(self, items, batch_size: int = 32, both_orders: bool | None = None) -> list[float]:
        assert self.batcher.loop is not None
        future = asyncio.run_coroutine_threadsafe(self.batcher.submit(list(items), both_orders), self.batcher.loop)
        return future.result(timeout=self.timeout_s)
