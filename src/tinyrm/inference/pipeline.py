"""The host pipeline of ``compare_batch``: the host builds batches ahead so that the device never waits on it.

On with ``InferenceConfig.overlap`` = ``on`` (``auto``: on a CUDA device) and more pairs than one chunk. The pairs
are cut into chunks of ``chunk_pairs``, each planned on its own, results in input order: exactly what scoring
those chunks one after another gives (the serial path plans a whole call at once, so its batches, and with dynamic
int8 its results, can differ; docs/inference.md, "Host pipeline"). Worker threads (``host_workers``; auto: a
quarter of the cores, at most 4, on a CUDA host, else 1) each take a chunk and do all of its host work: tokenise
it ahead (``CachingClozeEncoder.prefetch``: batched calls in which the Rust tokenizer releases the GIL and uses
its own threads), encode both orders, plan the batches and collate or pack each one (``batches.host_batches``),
into page-locked memory on a CUDA host. The calling thread only copies each batch to the device without blocking,
runs the forward pass, and reads the chunk's results back once (``InferenceEngine.run_batches``). Up to
``host_workers + 1`` chunks are built ahead of the one running.

Adaptive order (``both_orders="auto"``) needs the first order's results to choose the second: its workers
encode ahead, and the calling thread plans and runs each chunk as the serial path does.

``gc_paused``: Python's cyclic garbage collector is paused while ``compare_batch`` runs (``InferenceConfig.
pause_gc``). The host makes tens of small containers per pair (id lists, rows, ``Encoded``), all acyclic and
freed by reference counting, yet they trigger collections, and a full one walks every object in the process
(torch's and transformers' included): on this CPU the collector took 15-35% of the host's time under the GIL.
A pause longer than ``MAX_GC_PAUSE_S`` still gets a young-generation collection at the next chunk or call end:
it reclaims the cyclic garbage made since the last one (another thread's: a busy server's requests) without
walking the whole process (25 ms after 4,096 pairs on this CPU, against 220 ms for a full collection).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from .adaptive import AutoOrder
from .batches import host_batches, pair_units

MAX_AUTO_WORKERS = 4
MAX_GC_PAUSE_S = 10.0  # paused longer (overlapping calls, a long pipeline): a young collection at a checkpoint
_gc_lock = threading.Lock()
_gc_state = {"pauses": 0, "was_enabled": False, "since": 0.0}


@contextmanager
def gc_paused(pause: bool = True) -> Iterator[None]:
    """Pause the cyclic garbage collector within the block (``pause``), for every thread. Calls may nest and
    overlap (scoring in several threads): the collector runs again, if it ran before the first, when the last
    one ends; while they overlap, :func:`gc_checkpoint` (at each end, and per pipeline chunk) collects once the
    pause has lasted ``MAX_GC_PAUSE_S``, so other threads' cyclic garbage (a busy server's) is still reclaimed."""
    if not pause:
        yield
        return
    with _gc_lock:
        if _gc_state["pauses"] == 0:
            _gc_state["was_enabled"] = gc.isenabled()
            _gc_state["since"] = time.monotonic()
            gc.disable()
        _gc_state["pauses"] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_state["pauses"] -= 1
            if _gc_state["pauses"] == 0 and _gc_state["was_enabled"]:
                gc.enable()
        gc_checkpoint()


def gc_checkpoint() -> None:
    """Within a pause that has lasted ``MAX_GC_PAUSE_S``: a full collection now (the collector itself stays
    paused). Not the young generation alone: what was alive at one checkpoint moves to an older generation, which
    a pool of threads that never all stop would then never collect (a few hundred ms per 10 s: 2-3%)."""
    with _gc_lock:
        due = (_gc_state["pauses"] > 0 and _gc_state["was_enabled"]
               and time.monotonic() - _gc_state["since"] > MAX_GC_PAUSE_S)
        if due:
            _gc_state["since"] = time.monotonic()
    if due:
        gc.collect()


def host_workers(configured: int, device: torch.device | str) -> int:
    """Threads building chunks: ``configured``, or (0) a quarter of the CPU cores, at most 4, on CUDA; 1 else."""
    if configured > 0:
        return configured
    if torch.device(device).type != "cuda":
        return 1
    return max(1, min(MAX_AUTO_WORKERS, (os.cpu_count() or 4) // 4))


def run_pipeline(engine, items: Sequence, both, batch_size: int | None, max_batch_tokens: int | None,
                 prefixes: Sequence | None = None) -> list[float]:
    """P(a better than b) for ``items``, chunk by chunk, each chunk's host work done ahead in worker threads
    (``engine``: an ``InferenceEngine``)."""
    size = engine.config.chunk_pairs
    starts = list(range(0, len(items), size))
    max_rows, budget = engine._limits(batch_size, max_batch_tokens)
    prepared = engine.prepared()  # on this thread: the private copy is built (or found) once, before the workers
    packed, by_tokens = engine.uses_packed(prepared), engine.plans_by_tokens(prepared)
    pin = engine.rm.device.type == "cuda"
    adaptive = isinstance(both, AutoOrder)
    # The tokenizer's truncation / padding state is settled here: worker calls then only read it.
    engine.rm.tokenizer("a", "b", verbose=False)

    def build(start: int):
        chunk = items[start : start + size]
        encodings = engine._encode_chunk(chunk, both, None if prefixes is None else prefixes[start : start + size])
        if adaptive:
            return len(chunk), encodings, None
        units = pair_units(len(chunk), both)
        return len(chunk), encodings, list(host_batches(encodings, units, engine.pad_id, packed, max_rows, budget, pin,
                                                        by_tokens))

    out: list[float] = []
    workers = host_workers(engine.config.host_workers, engine.rm.device)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tinyrm-host") as pool:
        pending = deque(pool.submit(build, start) for start in starts[: workers + 1])
        later = iter(starts[workers + 1 :])
        try:
            while pending:
                n, encodings, batches = pending.popleft().result()
                gc_checkpoint()
                start = next(later, None)
                if start is not None:
                    pending.append(pool.submit(build, start))
                if batches is None:
                    out += engine._score_chunk(encodings, n, both, batch_size, max_batch_tokens)
                else:
                    probs = engine.run_batches(prepared, batches, len(encodings))
                    out += engine.finish_chunk(probs, encodings, n, both, batch_size, max_batch_tokens)
        finally:
            for future in pending:  # an error: no more chunks built for nothing
                future.cancel()
    return out
