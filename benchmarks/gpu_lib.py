"""Helpers of ``gpu_path.py`` (and its sections, ``gpu_scoring.py`` and ``gpu_training.py``): synthetic inputs
of exact token lengths, the budgeted run and its JSON, the plain padded loop, the host-only instruments
(``forward_removed``, ``host_split``), what this machine's tinyrm and torch offer (packed training, varlen
attention), steady training rates and the profiler's top events.

Like ``speedlib`` (whose shared helpers these use), free of anything the lent GPU machine lacks.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import speedlib
import torch
from speedlib import Pair
from torch import nn


# ----------------------------------------------------------------------------- synthetic inputs
def synthetic_tokenizer(vocab_size: int = speedlib.MODERNBERT_VOCAB):
    """A WordLevel tokenizer with BERT special tokens, "0"/"1" and words ``w0``, ``w1``, ...: one
    token per word, so texts of random words have exact token lengths. For machines without the
    embedded model (its tokenizer) or the hub."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = specials + ["0", "1", ".", ",", "?", ":", "!"]
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_input_names=["input_ids",
                                                                                              "attention_mask"])


def synthetic_pairs(n: int, length: int, spread: float = 0.5, seed: int = 0, vocab: int = 50000,
                    overhead: int = 24) -> list[Pair]:
    """Pairs of random ``w<i>`` words whose encodings are ~U[(1 - spread) x length, length] tokens
    (with ``synthetic_tokenizer``: one token per word; ``overhead`` = template + instruction tokens)."""
    rng = random.Random(seed)
    words = _words(vocab)
    out = []
    for _ in range(n):
        total = max(8, int(length * rng.uniform(1.0 - spread, 1.0)) - overhead)
        a_len = b_len = max(1, total // 4)
        p_len = max(1, total - a_len - b_len)
        # choices(): ~10x faster than a randrange per word (20,000 pairs of 512 tokens in well under a second)
        out.append(tuple(" ".join(rng.choices(words, k=k)) for k in (p_len, a_len, b_len)))
    return out


@lru_cache(maxsize=2)
def _words(vocab: int) -> list[str]:
    return [f"w{i}" for i in range(10, vocab)]


def parse_point(spec: str) -> tuple[int, int]:
    """A scoring point: ``512`` (every sequence ~512 tokens) or ``64-512`` (lengths uniform in [64, 512])."""
    lo, _, hi = spec.partition("-")
    lo_n, hi_n = int(lo), int(hi or lo)
    if not 0 < lo_n <= hi_n:
        raise ValueError(f"a length point is L or LO-HI with 0 < LO <= HI, got {spec!r}")
    return lo_n, hi_n


def point_pairs(n: int, spec: str, seed: int = 0) -> list[Pair]:
    lo, hi = parse_point(spec)
    return synthetic_pairs(n, hi, spread=1.0 - lo / hi, seed=seed)


def alternate_length_cue(pairs: Sequence[Pair]) -> list[Pair]:
    """The chosen response (first) is the longer one, by characters as ``--length-balance`` counts them,
    in even pairs and the shorter one in odd pairs, so length balancing keeps every pair: random words
    alone leave it to chance, and a few pairs can all fall one way (issue 26: the smoke's training
    had none left). Swaps the two responses, or changes one word of a tie (same token count)."""
    out = []
    for i, (prompt, a, b) in enumerate(pairs):
        if len(a) == len(b):
            words = a.split(" ")
            words[-1] = "w10" if len(words[-1]) > 3 else "w10000"  # one token either way
            a = " ".join(words)
        if (len(a) > len(b)) != (i % 2 == 0):
            a, b = b, a
        out.append((prompt, a, b))
    return out


# ----------------------------------------------------------------------------- the run, baselines, instruments
class Terminated(BaseException):
    """SIGTERM (run.sh's ``timeout``) raised in the main thread. A BaseException, so no row's ``except Exception``
    takes it: the run goes straight to its report."""


@contextmanager
def sigterm_raises(run: BudgetRun) -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (once; later ones are ignored, so the report that follows
    is not cut short: run.sh's ``timeout -k`` kills what still hangs) and marks ``run`` stopped; the previous
    handler after it."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        run.stopped = True
        raise Terminated(f"signal {signum} (SIGTERM): the run was stopped from outside")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class BudgetRun:
    """A benchmark under a time budget, whose JSON is rewritten after every measurement (gpu_path.py), with
    ``derive(document)``'s keys (the targets and decisions) recomputed at every save: a run killed mid-way
    leaves its verdicts on what it measured."""

    def __init__(self, budget_s: float, output: str | None, derive=None) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.output = output
        self.derive = derive
        self.stopped = False  # SIGTERM came (sigterm_raises)
        self.document: dict = {"benchmark": "gpu_path", "scoring": [], "training": [], "sweep": [], "skipped": [],
                               "errors": [], "notes": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.document["elapsed_s"] = time.monotonic() - self.start
        if self.derive is not None:
            try:
                self.document.update(self.derive(self.document))
                self.document.pop("derive_error", None)
            except Exception as error:  # noqa: BLE001 - not run.error: that saves, and would derive again
                self.document["derive_error"] = f"{type(error).__name__}: {error}"
        if self.output:  # written beside, then renamed: a kill mid-write leaves the last whole document
            partial = f"{self.output}.partial"
            speedlib.write_json(partial, self.document)
            os.replace(partial, self.output)

    def skip(self, what: str, reason: str) -> None:
        self.document["skipped"].append({"what": what, "reason": reason})
        print(f"  skipped {what}: {reason}", file=sys.stderr)
        self.save()

    def error(self, what: str, error: BaseException) -> None:
        # The innermost frames: where inside varlen_attn or the compiler it failed, not the driver's outer calls.
        self.document["errors"].append({"what": what, "error": f"{type(error).__name__}: {error}",
                                        "traceback": traceback.format_exc(limit=-15)})
        print(f"  {what} FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        self.save()
        # Code that wraps what it catches (the compiler; its workers, which timeout's SIGTERM also reaches) can turn
        # Terminated into an ordinary error that a row's try takes: after a SIGTERM any error stops the run.
        if self.stopped and not isinstance(error, Terminated):
            raise Terminated("stopped by SIGTERM (this error came after it)") from error


def hf_padded(model: nn.Module, rm, pairs: Sequence[Pair], batch_size: int) -> list[float]:
    """The plain loop: both orders, input order, padded batches, full logits, read at the mask."""
    from tinyrm.inference.batches import collate

    encodings = [rm.encode(p, a, b) for p, a, b in pairs] + [rm.encode(p, b, a) for p, a, b in pairs]
    answer = torch.tensor(rm.answer_ids, device=rm.device)
    pad_id = rm.tokenizer.pad_token_id or 0
    probs: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(encodings), batch_size):
            batch = {k: v.to(rm.device) for k, v in collate(encodings[start : start + batch_size], pad_id).items()}
            positions = batch.pop("mask_positions")
            batch.pop("token_type_ids", None)
            logits = model(**batch).logits
            rows = torch.arange(len(positions), device=rm.device)
            probs += torch.softmax(logits[rows, positions][:, answer].float(), dim=-1)[:, 0].tolist()
            del logits
    n = len(pairs)
    return [(probs[i] + 1 - probs[n + i]) / 2 for i in range(n)]


class EncodedLengths:
    """Encoded lengths of both orders of a point's pairs, computed once (the encoding does not depend on
    the shape) and only as far as a measurement went: tokens/s and the useful FLOPs."""

    def __init__(self, pairs: Sequence[Pair]) -> None:
        self.pairs, self.values = pairs, []

    def first(self, rm, n: int) -> list[int]:
        """Lengths of both orders of ``pairs[:n]`` (as ``rm`` encodes them: the same for every shape)."""
        todo = self.pairs[len(self.values) // 2 : n]
        if hasattr(rm.encoder, "prefetch"):  # one batched tokenizer call (the caching encoder), not one per text
            rm.encoder.prefetch(todo)
        for p, a, b in todo:
            self.values += [len(rm.encode(p, a, b).input_ids), len(rm.encode(p, b, a).input_ids)]
        return self.values[: 2 * n]


@contextmanager
def forward_removed(engine) -> Iterator[None]:
    """The scoring pipeline without its forward pass (the host-only row): within the block, the engine's
    prepared forwards (padded and packed) return zero logits of the right shape ``[rows, answers]`` on the
    device, so tokenisation, planning, collation or packing, the host->device copy and the read-back of
    the results run as they do, and the model does not."""
    prepared = engine.prepared()
    if engine.config.recheck_margin > 0 and prepared.dtype != torch.float32:
        raise ValueError("forward_removed: set recheck_margin to 0 (its fp32 re-scoring would run the model)")
    saved = prepared.forward, prepared.packed
    answers = len(engine.rm.answer_ids)

    def padded(input_ids, attention_mask, mask_positions, token_type_ids=None):
        return torch.zeros((input_ids.shape[0], answers), dtype=prepared.dtype, device=input_ids.device)

    def packed(batch):
        return torch.zeros((batch.batch_size, answers), dtype=prepared.dtype, device=batch.input_ids.device)

    prepared.forward = padded
    prepared.packed = packed if saved[1] is not None else None  # packable or not: as before
    try:
        yield
    finally:
        prepared.forward, prepared.packed = saved
    # The engine rebuilds its copy when the weights change; then the block would have timed the model.
    if engine.prepared() is not prepared:
        raise RuntimeError("the engine rebuilt its model during the host-only measurement")


class _TimedTokenizer:
    """A Rust tokenizer whose ``encode_batch_fast`` calls are timed (``host_split``); all else passes through."""

    def __init__(self, backend) -> None:
        self._backend, self.seconds = backend, 0.0

    def encode_batch_fast(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._backend.encode_batch_fast(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name: str):
        return getattr(self._backend, name)


def host_split(rm, pairs: Sequence[Pair]) -> dict:
    """The host's work per pair, run serially (the caller's thread, forward removed, chunk by chunk as the
    pipeline's workers take them): microseconds inside the
    Rust tokenizer's batched calls, which release the GIL and spread over the tokenizer's own threads
    (``tokenizer_us``), and outside them (``python_us``: held under the GIL, so ``1e6 / python_us`` pairs/s
    is the most that any number of host threads reaches: ``gil_ceiling_pairs_per_s``). A tokenizer without
    the direct Rust route (``tinyrm.inference.tokens.rust_tokenizer``) counts wholly as Python."""
    from tinyrm.inference import tokens

    timers: list[_TimedTokenizer] = []
    direct = tokens.rust_tokenizer

    def timed(tokenizer):
        backend = direct(tokenizer)
        if backend is None:
            return None
        timers.append(_TimedTokenizer(backend))
        return timers[-1]

    config = rm.engine.config
    overlap, tokens.rust_tokenizer, config.overlap = config.overlap, timed, "off"
    try:
        with forward_removed(rm.engine):
            rm.encoder._cache.clear()
            size = config.chunk_pairs  # chunk by chunk, as the pipeline's workers take them
            start = time.perf_counter()
            for first in range(0, len(pairs), size):
                rm.compare_batch(pairs[first : first + size])
            seconds = time.perf_counter() - start
    finally:
        tokens.rust_tokenizer, config.overlap = direct, overlap
    inside = sum(t.seconds for t in timers)
    python_us = (seconds - inside) / len(pairs) * 1e6
    return {"pairs": len(pairs), "tokenizer_us": inside / len(pairs) * 1e6, "python_us": python_us,
            "gil_ceiling_pairs_per_s": 1e6 / python_us if python_us > 0 else None}


def packed_training_available() -> bool:
    """Whether this tinyrm trains packed: its TrainConfig has an ``attention`` field."""
    from dataclasses import fields

    from tinyrm.training.config import TrainConfig

    return "attention" in {f.name for f in fields(TrainConfig)}


def steady_rate(metrics: Path, warmup: int, pairs_per_step: float) -> tuple[float | None, float | None]:
    """(pairs/s, s/step) over the optimizer steps after ``warmup``, from ``metrics.jsonl`` timestamps."""
    times = {}
    for line in Path(metrics).read_text().splitlines():
        record = json.loads(line)
        if "loss" in record and "time" in record:
            times[int(record["step"])] = float(record["time"])
    last = max(times, default=0)
    if warmup not in times or last <= warmup:
        return None, None
    per_step = (times[last] - times[warmup]) / (last - warmup)
    return pairs_per_step / per_step, per_step


def varlen_info(dev: torch.device) -> dict:
    """What the packed path's attention runs on here: torch's ``varlen_attn`` (and its signature: the
    ``window_size`` of ModernBERT's local layers is newer than torch 2.10), else the SDPA route."""
    import inspect

    from tinyrm.inference import varlen

    fn = varlen._varlen_attn()
    return {"varlen_attn": fn is not None, "flash_route": varlen.flash_varlen_available(dev),
            "window_size": varlen.varlen_window_supported(),
            "signature": str(inspect.signature(fn)) if fn is not None else None}


def profiler(cuda: bool, **kwargs):
    """``torch.profiler.profile`` over the host's ops and, on CUDA, the device's kernels (:func:`top_events`
    reads it)."""
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])], **kwargs)


def _device_time_events(events) -> list:
    """The events whose self device times add up to the device's busy time once, as torch's own table sums them:
    with kineto a kernel is both an event of its own (device type CUDA) and, in ``kernels``, the self device time
    of the op that launched it, so summing every event counts each kernel twice. Device events, not user
    annotations (``record_function`` ranges mirrored on the device); CPU events only where they hold the
    kernels themselves (``is_legacy``: no device events were recorded)."""
    return [e for e in events if (e.device_type == torch.autograd.DeviceType.CPU and getattr(e, "is_legacy", False))
            or (e.device_type != torch.autograd.DeviceType.CPU and not getattr(e, "is_user_annotation", False))]


def top_events(prof, cuda: bool, passes: int, top: int, wall_ms: float | None = None) -> dict:
    """A finished ``torch.profiler`` run over ``passes`` passes (or steps): its ``top`` kernels by device time on
    CUDA (ops by self CPU time off it), per pass; ``ms_per_pass`` is their total (the device's busy time). The wall
    time per pass is ``wall_ms`` where given (the same passes timed unprofiled), else its steps' host time; on CUDA
    ``busy`` is device time over wall time (off it both are the host's clock: None)."""
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    averages = prof.key_averages()
    timed = _device_time_events(averages) if cuda else list(averages)
    events = sorted(timed, key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    # A scheduled run marks each step (ProfilerStep#n): its host time is the step's wall time, against which
    # the device time says how busy the device was (a low share: the device waits on the host).
    steps = [e for e in averages if e.key.startswith("ProfilerStep")]
    wall = wall_ms if wall_ms is not None else sum(e.cpu_time_total for e in steps) / 1e3 / passes if steps else None
    return {"clock": "device" if cuda else "cpu", "ms_per_pass": total / 1e3 / passes, "wall_ms_per_pass": wall,
            "busy": total / 1e3 / passes / wall if cuda and wall else None,
            "top": [{"name": e.key, "calls": e.count // passes, "ms_per_pass": getattr(e, key) / 1e3 / passes,
                     "share": getattr(e, key) / total} for e in events[:top]]}
