"""The host pipeline (``inference.pipeline``, ``overlap="on"``) gives exactly the results of scoring chunk by chunk.

Chunks built ahead in worker threads (tokenised, planned, collated or packed) and run on the calling thread:
the same P(a better), in input order, as the serial path over the same chunks, at chunk boundaries, in both
orders and one, padded and packed, with per-row prefixes and adaptive order; within float noise of scoring
everything as one chunk. (The batched prefetch against encoding one pair at a time: test_host_tokens.py.)
"""

from __future__ import annotations

import weakref

import pytest

from tinyrm.inference.batches import collate, host_batches, pair_units
from tinyrm.inference.pipeline import host_workers
from tinyrm.pairwise.model import RewardModel
from tinyrm.tools.synthetic import generate

CHUNK = 5


def _items(n: int, seed: int = 11) -> list[tuple[str, str, str]]:
    out = []
    for k, pair in enumerate(generate(n, seed=seed)):
        pad = " more" * ((k * 7) % 23)
        out.append((pair.prompt + pad, pair.chosen, pair.rejected + pad[: 5 * (k % 3)]))
    return out


def _model(path: str, precision: str = "fp32", attention: str = "padded", workers: int = 3) -> RewardModel:
    rm = RewardModel.from_pretrained(path, device="cpu", precision=precision)
    rm.engine.config.attention = attention
    rm.engine.config.chunk_pairs = CHUNK
    rm.engine.config.host_workers = workers
    return rm


def _chunk_by_chunk(rm: RewardModel, items, **kw) -> list[float]:
    """Today's path, chunk after chunk on one thread (overlap off within each chunk)."""
    mode = rm.engine.config.overlap
    rm.engine.config.overlap = "off"
    try:
        out = []
        for start in range(0, len(items), CHUNK):
            sub = {k: v[start:start + CHUNK] if k == "domains" and v is not None else v for k, v in kw.items()}
            out += rm.compare_batch(items[start:start + CHUNK], **sub)
        return out
    finally:
        rm.engine.config.overlap = mode


def _pipeline(rm: RewardModel, items, **kw) -> list[float]:
    calls = []
    original = rm.engine.run_batches

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    rm.engine.run_batches = spy
    rm.engine.config.overlap = "on"
    try:
        out = rm.compare_batch(items, **kw)
    finally:
        del rm.engine.run_batches
    assert len(calls) >= -(-len(items) // CHUNK)  # a run per chunk (and per fp32 recheck): the pipeline ran
    return out


@pytest.mark.parametrize("n", [CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 2])
@pytest.mark.parametrize("both", [True, False])
def test_pipeline_equals_chunk_by_chunk(tiny_modernbert: str, n: int, both: bool) -> None:
    rm = _model(tiny_modernbert)
    items = _items(n)
    assert not rm.engine.overlap_enabled(n)  # auto: on GPU only; the CPU default stays serial
    rm.engine.config.overlap = "on"
    assert rm.engine.overlap_enabled(n)
    got = _pipeline(rm, items, both_orders=both, batch_size=3)
    assert got == _chunk_by_chunk(rm, items, both_orders=both, batch_size=3)  # exactly: the same batches
    rm.engine.config.overlap = "off"
    whole = rm.compare_batch(items, both_orders=both, batch_size=3)  # other batches: float noise only
    assert got == pytest.approx(whole, abs=1e-5)
    assert len(set(got)) > 1


@pytest.mark.parametrize("attention", ["packed", "padded"])
def test_pipeline_packed_padded_and_bf16(tiny_bert: str, attention: str) -> None:
    """Packed batches built in the workers; and the default precision (bf16 where the CPU has it, with the
    fp32 recheck of near-ties on the calling thread)."""
    for precision in ("fp32", "auto"):
        rm = _model(tiny_bert, precision=precision, attention=attention, workers=2)
        items = _items(2 * CHUNK + 3, seed=4)
        got = _pipeline(rm, items, max_batch_tokens=300)
        assert rm.engine.uses_packed() == (attention == "packed")
        assert got == _chunk_by_chunk(rm, items, max_batch_tokens=300)


def test_pipeline_prefixes_and_adaptive_order(tiny_bert: str) -> None:
    rm = _model(tiny_bert)
    rm.config.domain_prefixes = {"chat": "Which reply is kinder?", "safety": "Which reply is safer?"}
    items = _items(2 * CHUNK + 1, seed=8)
    domains = [("chat", "safety", None)[k % 3] for k in range(len(items))]
    got = _pipeline(rm, items, domains=domains)
    assert got == _chunk_by_chunk(rm, items, domains=domains)
    assert got != _pipeline(rm, items)  # the prefixes reached the workers' encodings
    before = rm.engine.order_stats.pairs
    adaptive = _pipeline(rm, items, both_orders="auto", order_margin=0.3)
    assert rm.engine.order_stats.pairs - before == len(items)
    assert adaptive == _chunk_by_chunk(rm, items, both_orders="auto", order_margin=0.3)


def test_pipeline_error_reaches_the_caller(tiny_bert: str) -> None:
    rm = _model(tiny_bert)
    items = _items(3 * CHUNK)
    items[2 * CHUNK + 1] = ("prompt", None, "b")  # fails in a worker, in the third chunk
    rm.engine.config.overlap = "on"
    with pytest.raises((TypeError, AttributeError, ValueError)):
        rm.compare_batch(items)


def test_host_workers(monkeypatch) -> None:
    assert host_workers(0, "cpu") == 1 and host_workers(3, "cpu") == 3
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert host_workers(0, "cuda") == 4
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert host_workers(0, "cuda") == 1
    from tinyrm.inference.engine import InferenceConfig

    with pytest.raises(ValueError, match="host_workers"):
        InferenceConfig(host_workers=-1)


def test_host_batches_are_the_serial_batches(tiny_bert: str) -> None:
    rm = _model(tiny_bert)
    encodings = [rm.encode(*item) for item in _items(7)]
    encodings += [rm.encode(p, b, a) for p, a, b in _items(7)]
    batches = list(host_batches(encodings, pair_units(7, True), 0, False, 4, 10_000))
    assert sorted(j for b in batches for j in b.rows) == list(range(14))
    for batch in batches:
        expected = collate([encodings[j] for j in batch.rows], 0)
        assert all((batch.padded[k] == v).all() for k, v in expected.items())
        assert all(j in batch.rows and j + 7 in batch.rows for j in batch.rows if j < 7)  # both orders together


def test_gc_paused_nests_across_threads_and_restores() -> None:
    """The collector is off while any pause is open, in any thread, and back as it was when the last ends."""
    import gc
    import threading

    from tinyrm.inference.pipeline import gc_paused

    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with gc_paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    with gc_paused():
        thread.start()
        assert inside.wait(10) and not gc.isenabled()
    assert not gc.isenabled()  # the other thread's pause is still open
    release.set()
    thread.join(10)
    assert gc.isenabled()
    with gc_paused(False):
        assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()


class _Node:
    itself: object = None


def test_a_long_pause_still_collects(monkeypatch) -> None:
    """Overlapping pauses past MAX_GC_PAUSE_S: a full collection at the next checkpoint, the collector paused;
    cyclic garbage still alive at one checkpoint (moved to an older generation) goes at the next."""
    import gc

    from tinyrm.inference import pipeline

    def full() -> int:
        return gc.get_stats()[2]["collections"]  # a full collection counts in the oldest generation

    with pipeline.gc_paused():
        before = full()
        with pipeline.gc_paused():
            pipeline.gc_checkpoint()
        assert full() == before  # not yet due
        monkeypatch.setattr(pipeline, "MAX_GC_PAUSE_S", 0.0)
        node = _Node()
        node.itself = node  # cyclic garbage made during the pause
        probe = weakref.ref(node)
        del node
        assert probe() is not None
        survivor = _Node()
        survivor.itself = survivor  # alive at the next checkpoint, garbage after it
        survived = weakref.ref(survivor)
        with pipeline.gc_paused():
            pass
        assert full() == before + 1 and not gc.isenabled() and probe() is None
        del survivor
        with pipeline.gc_paused():
            pass
        assert survived() is None and not gc.isenabled()
    assert gc.isenabled()


@pytest.mark.parametrize("pause", [True, False])
def test_compare_batch_pauses_gc(tiny_bert: str, pause: bool) -> None:
    """compare_batch (serial and pipelined) runs its host work with the collector paused unless
    ``pause_gc`` is off; the results do not depend on it."""
    import gc

    seen: list[bool] = []
    rm = _model(tiny_bert)
    rm.engine.config.pause_gc = pause
    encode = rm.encoder.encode
    rm.encoder.encode = lambda *args, **kw: seen.append(gc.isenabled()) or encode(*args, **kw)
    items = _items(2 * CHUNK + 1)
    for overlap in ("off", "on"):
        rm.engine.config.overlap = overlap
        scores = rm.compare_batch(items)
        assert seen and set(seen) == {not pause}
        seen.clear()
    assert gc.isenabled()
    rm.engine.config.pause_gc = not pause
    assert rm.compare_batch(items) == scores
