"""Fair micro-batching on a single model thread: slices, round-robin, deadlines, load shedding.

Every request is cut into slices of at most ``slice_pairs`` pairs. A forward call (one
``compare_batch`` on the model thread) takes up to ``max_batch_size`` pairs, one slice per waiting
request in turn (round-robin; the requests served move to the back of the line), so small concurrent
requests still share forward calls and a 1-pair request that arrives while a 4,096-pair request is
being scored waits for at most the call in flight plus its own, not for the whole large request.
Results come back in each request's own order (a request's slices are cut from its pairs sorted by length, so
each call pads little, as one call over the whole request would). A call waits for company up to ``max_wait_ms``
after the oldest live request arrived, and never past half the time a waiting request has to its deadline (a lone
request with a short deadline is scored, not timed out), unless a full call's worth of pairs is already waiting.

A request is refused (``Unavailable``, the app's 503 with ``Retry-After``) at once when accepting it
would take the pairs accepted and not yet answered past ``max_queued_pairs`` (load shedding); it fails
the same way when its deadline passes (``timeout_s``: the server's ``--request-timeout`` or less from
the client's ``X-Request-Timeout``), and its slices not yet scored are dropped. A request whose
client went away (its future cancelled) has its remaining slices dropped too.

Step requests (``/v1/score_steps``, ``kind="steps"``) go through the same line: their units are the sequences
that read the steps' verdicts (``process.scoring.encode_many``), scored by the model's ``verdicts`` in calls
of their own kind, sliced, counted, timed out and shed as pairs are (a unit counts as a pair in the limits).
``/v1/rank`` on a model with a reward per response (the baselines) sends ``kind="rewards"``: (prompt, response)
units scored by its ``score_batch``.
Kinds (and ``both_orders`` values) take turns: a request of another kind than the last call's goes next.

Shutdown (``stop``) refuses new work (503), finishes what is queued or being scored, then stops the
loop (it returns once nothing is left; ``stop`` cancels it until it is done); what cannot finish within
``drain_s`` gets an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from .entries import QueuedRequest, Slice
from .metrics import SchedulerStats

logger = logging.getLogger(__name__)


class Unavailable(RuntimeError):
    """The server cannot answer this request now: a 503, with ``retry_after`` seconds for the client."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _on_cpu(rm) -> bool:
    return getattr(getattr(rm, "device", None), "type", "cpu") == "cpu"


def default_max_batch(rm) -> int:
    """Pairs (or step units) per forward call: 64 on a GPU, where wide calls are the point; 16 on a CPU, where a
    call's time is what a small request waits for and wider calls were measured no faster
    (docs/ranking-and-serving.md: the load benchmark and "Under load"). Slices are a quarter of it."""
    return 16 if _on_cpu(rm) else 64


def default_forward_batch(rm, max_batch_size: int) -> int:
    """Rows per forward pass: the whole micro-batch (both orders) on a GPU; 8 on a CPU, where wide
    padded batches were measured slower than small length-sorted ones (docs/ranking-and-serving.md, load benchmark)."""
    return 8 if _on_cpu(rm) else 2 * max_batch_size


class MicroBatcher:
    """Fair slices of the queued requests, merged into ``compare_batch`` calls on one model thread."""

    def __init__(self, rm, max_batch_size: int | None, max_wait_ms: float, forward_batch_size: int | None = None,
                 slice_pairs: int | None = None, max_queued_pairs: int | None = None,
                 timeout_s: float | None = None) -> None:
        self.rm = rm
        self.max_batch_size = max_batch_size = max_batch_size or default_max_batch(rm)
        self.max_wait = max_wait_ms / 1000.0
        self.forward_batch_size = forward_batch_size or default_forward_batch(rm, max_batch_size)
        # A quarter of a call by default, so that a request arriving behind a large one shares the next call.
        self.slice_pairs = min(slice_pairs or max(1, max_batch_size // 4), max_batch_size)
        self.max_queued_pairs = max_queued_pairs
        self.timeout_s = timeout_s
        # Requests that leave both_orders to the model share calls with those that spell it out.
        self.default_both_orders = getattr(getattr(rm, "config", None), "both_orders", None)
        self.stats = SchedulerStats()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinyrm-model")
        self._pending: deque[QueuedRequest] = deque()  # in line, round-robin order (partly scored ones included)
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.busy = False
        self.closing = False
        self._batch: list[Slice] = []  # the call being scored (stop() fails it if it cannot finish)
        self._last_key: tuple[str, bool | None] | None = None  # the last call's kind and both_orders
        self._reserved = 0  # units held by endpoints working before submit (``reserved``)

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
        running: list[QueuedRequest] = []
        task = self._task
        if task and not task.done():
            deadline = time.monotonic() + drain_s
            while (self.queued or self.busy) and not task.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            running = [s.request for s in self._batch]  # cancelling the loop below forgets this call
            while not task.done():  # Python 3.11's wait_for can swallow a cancel: until it is really done
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
        for entry in [*running, *self._pending]:
            if entry.alive:
                entry.future.set_exception(Unavailable("server is shutting down"))
        self._pending.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ queue state
    @property
    def queued(self) -> int:
        """Requests with pairs waiting for the model (not counting those whose client went away)."""
        return sum(1 for e in self._pending if e.alive and e.waiting)

    @property
    def queued_pairs(self) -> int:
        """Pairs waiting for the model (live requests only)."""
        return sum(e.waiting for e in self._pending if e.alive)

    @property
    def outstanding_pairs(self) -> int:
        """Pairs accepted and not yet answered, in flight or waiting: what ``max_queued_pairs`` bounds."""
        return self._reserved + sum(len(e.items) - e.scored for e in self._pending if e.alive)

    def retry_after(self) -> int:
        """Whole seconds until what is accepted now should be answered, at the measured rate (1..60)."""
        rate = self.stats.pairs_per_second()
        if not rate:
            return 1
        return int(min(60, max(1, math.ceil(self.outstanding_pairs / rate))))

    # ------------------------------------------------------------------ requests
    async def submit(self, items: list, both_orders: bool | None = None, timeout_s: float | None = None,
                     kind: str = "pairs", arrived: float | None = None) -> list:
        """P(a better) per item. ``timeout_s``: this request's deadline (None: the server's), counted from
        ``arrived`` (the loop's time; None: now) where the endpoint did work first. ``kind="steps"``: ``items`` are
        step sequences (``process.scoring.encode_many``), and each gets its verdicts (a list)."""
        if not items:
            return []
        assert self.loop is not None and self._wakeup is not None, "batcher not started"
        self.admit(len(items))
        if both_orders is None:
            both_orders = self.default_both_orders
        now, timeout = self.loop.time(), self.timeout_s if timeout_s is None else timeout_s
        arrived = now if arrived is None else arrived
        # Company for at most max_wait, and half its time: the other half is for scoring.
        patience = arrived + min(self.max_wait, math.inf if timeout is None else timeout / 2)
        entry = QueuedRequest(list(items), both_orders, self.loop.create_future(), arrived, kind, patience)
        self._pending.append(entry)
        self._wakeup.set()
        left = None if timeout is None else max(timeout - (now - arrived), 0.0)
        try:
            # shield: the deadline cancels the wait, and the request is failed below (not cancelled).
            result = await asyncio.wait_for(asyncio.shield(entry.future), left)
        except asyncio.TimeoutError:  # noqa: UP041 - distinct from TimeoutError on 3.10
            if entry.future.done():
                result = entry.future.result()  # it finished (or failed) as the deadline passed
            else:
                unit = {"pairs": "pairs", "steps": "step sequences"}.get(kind, "responses")
                self._drop(entry, self.timed_out(
                    timeout, f"with {len(entry.items) - entry.scored} of {len(entry.items)} {unit} unanswered"))
                raise entry.future.exception() from None
        except asyncio.CancelledError:  # the client went away (the app cancels its request)
            if entry.alive:
                entry.future.cancel()
            self._forget(entry)
            self.stats.disconnected += 1
            raise
        self.stats.observe_latency(self.loop.time() - entry.arrived)
        return result

    def admit(self, n: int) -> None:
        """``Unavailable`` (counted in ``stats.shed``) unless ``n`` more pairs fit under ``max_queued_pairs`` now,
        or while stopping; ``submit`` checks it, and an endpoint with work before it (tokenising steps) first."""
        if self.closing:
            raise Unavailable("server is shutting down")
        limit = self.max_queued_pairs
        if limit is not None and self.outstanding_pairs + n > limit:
            self.stats.shed += 1
            retry = self.retry_after()
            raise Unavailable(f"server overloaded: {self.outstanding_pairs} pairs accepted and not yet answered; "
                              f"{n} more would pass the limit of {limit} (retry in {retry} s)", retry)

    @contextlib.contextmanager
    def reserved(self, n: int) -> Iterator[None]:
        """Hold ``n`` units of the bound while an endpoint works before ``submit`` (tokenising steps on the model
        thread), so that concurrent requests see them: one that cannot fit is shed before any such work."""
        self.admit(n)
        self._reserved += n
        try:
            yield
        finally:
            self._reserved -= n

    def timed_out(self, timeout_s: float, detail: str = "") -> Unavailable:
        """The error of a request past its deadline (counted in ``stats.timed_out``)."""
        self.stats.timed_out += 1
        return Unavailable(f"request timed out after {timeout_s:g} s{' ' + detail if detail else ''}; its remaining "
                           "work was dropped", self.retry_after())

    def _drop(self, entry: QueuedRequest, error: Exception) -> None:
        if entry.alive:
            entry.future.set_exception(error)
            entry.future.exception()  # retrieved: no "never retrieved" warning if nobody awaits it
        self._forget(entry)

    def _forget(self, entry: QueuedRequest) -> None:
        """Remove a request that will not be answered; its slices in flight are discarded when they return. The
        loop wakes: its wait for company may have been for this request."""
        with contextlib.suppress(ValueError):
            self._pending.remove(entry)
        if self._wakeup is not None:
            self._wakeup.set()

    async def run_model(self, fn: Callable, *args, **kwargs):
        """Run any model call on the model thread (never concurrently with a batch)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    # ------------------------------------------------------------------ the loop
    def _next_key(self) -> tuple[str, bool | None] | None:
        """The kind (and ``both_orders``) of the next call: the first in line's, unless a request of another kind
        than the last call's waits, which then goes next, so that it waits for the call in flight and not for
        the other kind's queue. None: nothing waits."""
        live = [e for e in self._pending if e.alive and e.waiting]
        if not live:
            return None
        return next((e.key for e in live if e.key != self._last_key), live[0].key)

    def _take_call(self, key: tuple[str, bool | None] | None) -> list[Slice]:
        """Slices for one call: one slice per live request of ``key`` in line order, round after round, until
        ``max_batch_size`` pairs; the requests served go to the back."""
        eligible = [e for e in self._pending if e.alive and e.waiting and e.key == key]
        if not eligible:
            return []
        self._last_key = key
        room, slices = self.max_batch_size, []
        served: dict[int, QueuedRequest] = {}
        while room > 0 and any(e.waiting for e in eligible):
            for entry in eligible:
                take = min(self.slice_pairs, entry.waiting, room)
                if take <= 0:
                    continue
                slices.append(Slice(entry, entry.next, entry.next + take))
                entry.next += take
                room -= take
                served[id(entry)] = entry
                if room == 0:
                    break
        # Round-robin: those served go behind everyone else, in the order they were served.
        self._pending = deque([e for e in self._pending if id(e) not in served and e.alive] + list(served.values()))
        return slices

    async def _run(self) -> None:
        assert self._wakeup is not None and self.loop is not None
        while True:
            self._pending = deque(e for e in self._pending if e.alive)
            if not any(e.waiting for e in self._pending):
                if self.closing:  # stop(): nothing is left, and nothing more is accepted
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            key = self._next_key()
            await self._wait_for_company(key)
            try:
                call = self._take_call(key)
                if call:
                    await self._score(call)
            except Exception:  # the batcher must outlive any single bad call
                logger.exception("batcher iteration failed")

    async def _wait_for_company(self, key: tuple[str, bool | None]) -> None:
        """Until a full call's worth of ``key`` waits, the first patience of the live waiting requests passes (max_wait
        after it arrived, or half its time to its deadline), or stop() begins (no company comes then). A request
        that dies meanwhile wakes the loop (``_forget``) and counts no more."""
        while not self.closing and self._waiting_pairs(key) < self.max_batch_size:
            remaining = min((e.patience for e in self._pending if e.alive and e.waiting), default=0) - self.loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):  # not wait_for, which can swallow a cancel on 3.11
                    await self._wakeup.wait()
            except TimeoutError:
                return

    def _waiting_pairs(self, key: tuple[str, bool | None]) -> int:
        return sum(e.waiting for e in self._pending if e.key == key and e.alive)

    async def _score(self, call: list[Slice]) -> None:
        """Score one call. If it fails and it merged several requests, each is scored again alone, so a request
        the model cannot take (or an error that one of them causes) fails only that request, not its
        neighbours in the call."""
        items = [item for s in call for item in s.request.pairs(s.start, s.stop)]
        kind, both = call[0].request.key
        rows = self.forward_batch_size
        started = time.perf_counter()
        self.busy = True
        self._batch = call
        try:
            probs = await self.loop.run_in_executor(self.executor, lambda: (
                self.rm.verdicts(items, batch_size=rows) if kind == "steps"
                else self.rm.score_batch(items, batch_size=rows) if kind == "rewards"
                else self.rm.compare_batch(items, batch_size=rows, both_orders=both)))
        except Exception as error:  # a failing call fails its requests, never the server
            requests = list({id(s.request): s.request for s in call if s.request.alive}.values())
            if len(requests) > 1:
                logger.warning("batch of %d pairs from %d requests failed (%s: %s); scoring each alone",
                               len(items), len(requests), type(error).__name__, error)
                for entry in requests:
                    if entry.alive:  # past its deadline or gone meanwhile: no call for it
                        await self._score([s for s in call if s.request is entry])
                return
            logger.exception("batch of %d pairs failed", len(items))
            for entry in requests:
                self._drop(entry, error)
            return
        finally:
            self.busy = False
            self._batch = []
            elapsed = time.perf_counter() - started
        requests = {id(s.request): s.request for s in call}
        self.stats.record_call(len(requests), len(call), len(items), elapsed)
        start = 0
        for s in call:
            entry, n = s.request, s.stop - s.start
            for i, p in zip(entry.order[s.start : s.stop], probs[start : start + n]):
                entry.results[i] = p if kind == "steps" else float(p)
            entry.scored += n
            start += n
        for entry in requests.values():
            if entry.scored == len(entry.items):
                self.stats.requests += 1
                self._forget(entry)
                if entry.alive:
                    entry.future.set_result(entry.results)

