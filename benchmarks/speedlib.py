"""Helpers shared by the speed benchmarks (roofline, int8, adaptive_order, train_throughput, gpu_path).

Not a benchmark itself. Kept free of psutil / rich / datasets / the embedded model at import time,
because ``gpu_path.py`` runs on a lent GPU machine that has only torch, transformers, peft and
accelerate besides the repository copy.
"""

from __future__ import annotations

import gc
import json
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DEV_HHH = DATA / "dev" / "hhh.jsonl"
Pair = tuple[str, str, str]

# ModernBERT shapes as published (HF ModernBertConfig defaults are the base model).
SHAPES = {
    "base": dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152),
    "large": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, intermediate_size=2624),
    "smoke": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96),
}
MODERNBERT_VOCAB = 50368


# ----------------------------------------------------------------------------- machine
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of an n x n x n ``torch.matmul`` in ``dtype`` (n: 2048 CPU, 8192 GPU)."""
    dev = device()
    n = n or (8192 if dev.type == "cuda" else 2048)
    a = torch.randn(n, n, dtype=dtype, device=dev)
    b = torch.randn(n, n, dtype=dtype, device=dev)
    torch.matmul(a, b)  # warm-up: kernel selection
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    del a, b
    return 2 * n**3 / best


def machine_info() -> dict:
    from tinyrm.inference.precision import cpu_bf16_native

    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0], "cpu_bf16_native": cpu_bf16_native(),
            "quantized_engine": torch.backends.quantized.engine}
    if torch.cuda.is_available():
        info.update(device=torch.cuda.get_device_name(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    else:
        info["device"] = "cpu"
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


class PeakMemory:
    """Peak memory above the starting level while the block runs: sampled RSS on CPU (psutil if
    installed, else /proc/self/statm), the allocator's peak on GPU. ``.mib`` after the block."""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = self.peak = _rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.mib = (torch.cuda.max_memory_allocated() - self.start) / 2**20
            self.peak_total_mib = torch.cuda.max_memory_allocated() / 2**20
            return
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, _rss())
        self.mib = (self.peak - self.start) / 2**20
        self.peak_total_mib = self.peak / 2**20


def _rss() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Timing(NamedTuple):
    seconds: float  # wall clock
    cpu_seconds: float  # process CPU time (steadier than wall time on a shared machine)
    peak_mib: float  # peak memory above the level at the start (RSS on CPU, allocator on GPU)
    peak_total_mib: float  # the peak itself
    result: Any


def timed(fn: Callable, *args, **kwargs) -> Timing:
    """Time ``fn(*args, **kwargs)`` and sample its peak memory."""
    with PeakMemory() as memory:
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        result = fn(*args, **kwargs)
        sync()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return Timing(seconds, cpu_seconds, memory.mib, memory.peak_total_mib, result)


# ----------------------------------------------------------------------------- FLOPs
def attention_spans(config, length: int) -> list[int]:
    """Keys each query attends to, per layer: ``length``, or the local window of ModernBERT's
    sliding layers (transformers 5 ``layer_types`` + ``sliding_window``; 4.x ``global_attn_every_n_layers``)."""
    n = config.num_hidden_layers
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        half = getattr(config, "sliding_window", None)
        window = 2 * half + 1 if half else getattr(config, "local_attention", length)
        return [min(length, window) if t == "sliding_attention" else length for t in layer_types[:n]]
    every = getattr(config, "global_attn_every_n_layers", None)
    window = getattr(config, "local_attention", None)
    if every and window:
        return [length if k % every == 0 else min(length, window) for k in range(n)]
    return [length] * n


def linear_weights_per_token(mlm: nn.Module) -> int:
    """Multiply-accumulates per token in the encoder layers' linear maps (pass the float model)."""
    from tinyrm.backbone import find_layers

    _, layers = find_layers(mlm)
    return sum(m.weight.numel() for m in layers.modules() if isinstance(m, nn.Linear))


def forward_flops(mlm: nn.Module, lengths: Sequence[int], head: str = "mask") -> float:
    """Useful forward FLOPs for sequences of the given real lengths (no padding).

    2 x linear weights x tokens, plus attention (QK^T and AV: 4 x span x hidden per token per layer,
    span = the local window on ModernBERT's sliding layers), plus the MLM head: at the mask only
    (``head="mask"``: transform + 2 answer logits, as tinyrm scores) or at every position over
    the whole vocabulary (``head="full"``, what a plain HF loop computes). Embedding lookups and
    norms are not counted. Cross-checked against ``tinyrm.tools.flops.exact_flops`` by ``flops_check``.
    """
    cfg = mlm.config
    hidden, vocab = cfg.hidden_size, cfg.vocab_size
    linear = linear_weights_per_token(mlm)
    total = 0.0
    for length in lengths:
        total += 2.0 * length * linear
        total += sum(4.0 * length * span * hidden for span in attention_spans(cfg, length))
        if head == "mask":
            total += 2.0 * (hidden * hidden + 2 * hidden)
        else:
            total += 2.0 * length * (hidden * hidden + hidden * vocab)
    return total


def flops_check(mlm: nn.Module, tokenizer, length: int = 256) -> dict:
    """``forward_flops`` with full attention vs tinyrm's FlopCounterMode count at one length
    (eager attention computes every score, so the local window is not seen there)."""
    import copy

    from tinyrm.tools.flops import exact_flops

    model = copy.deepcopy(mlm).float().cpu().eval()
    try:
        model.set_attn_implementation("eager")
    except (AttributeError, ImportError, ValueError):
        pass
    exact = exact_flops(model, tokenizer, length)
    cfg = mlm.config
    hidden = cfg.hidden_size
    full = 2.0 * length * linear_weights_per_token(mlm) + cfg.num_hidden_layers * 4.0 * length * length * hidden
    full += 2.0 * (hidden * hidden + 2 * hidden)
    return {"length": length, "tinyrm_exact": exact, "analytic_full_attention": full,
            "ratio": full / exact if exact else None}


# ----------------------------------------------------------------------------- data
def load_jsonl_pairs(path: Path) -> list[Pair]:
    rows: list[Pair] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            rows.append((r["prompt"], r["chosen"], r["rejected"]))
    return rows


def dev_pairs(path: str | Path | None = None, limit: int = 0, fallback: int = 64) -> tuple[list[Pair], str]:
    """dev/hhh (chosen first), or synthetic demo pairs when the shared data is absent."""
    path = Path(path) if path else DEV_HHH
    if path.is_file():
        pairs, source = load_jsonl_pairs(path), str(path)
    else:
        from tinyrm.tools.synthetic import generate

        pairs = [(p.prompt, p.chosen, p.rejected) for p in generate(limit or fallback, seed=11)]
        source = f"synthetic demo pairs ({path} absent)"
    return (pairs[:limit] if limit else pairs), source


def pool_pairs(seed: int = 0) -> tuple[list[Pair], str]:
    """Every shared train + dev pair (shuffled), or synthetic demo pairs."""
    files = sorted((DATA / "train").glob("*.jsonl")) + ([DEV_HHH] if DEV_HHH.is_file() else [])
    if files:
        pool = [p for f in files for p in load_jsonl_pairs(f)]
        source = f"{DATA} (train + dev)"
    else:
        from tinyrm.tools.synthetic import generate

        pool = [(p.prompt, p.chosen, p.rejected) for p in generate(2000, seed=seed)]
        source = "synthetic demo pairs (shared data absent)"
    random.Random(seed).shuffle(pool)
    return pool, source


def length_sets(encoder, pool: Sequence[Pair], counts: dict[str, int], short_max: int = 96,
                mixed_range: tuple[int, int] = (32, 512), long_tokens: int = 512, scan: int = 4000) -> dict:
    """short (encoded <= ``short_max`` tokens), mixed (the data as it comes, within ``mixed_range``)
    and long (>= ``long_tokens``: earlier prompts of other pairs prepended as context; the encoder's
    max_length caps them) sets of pairs."""
    scanned = list(pool[:scan])
    length = {p: len(encoder.encode(*p).input_ids) for p in scanned}
    lo, hi = mixed_range
    sets = {"short": [p for p in scanned if length[p] <= short_max][: counts.get("short", 0)],
            "mixed": [p for p in scanned if lo <= length[p] <= hi][: counts.get("mixed", 0)]}
    long: list[Pair] = []
    donors = iter(list(pool[scan:]) + scanned)
    for prompt, a, b in sorted(scanned, key=length.get, reverse=True)[: counts.get("long", 0)]:
        context = prompt
        while len(encoder.encode(context, a, b).input_ids) < min(long_tokens, encoder.max_length):
            context = next(donors)[0] + "\n\n" + context
        long.append((context, a, b))
    sets["long"] = long
    return sets


# ----------------------------------------------------------------------------- models
def synthetic_tokenizer(vocab_size: int = MODERNBERT_VOCAB):
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


def random_modernbert(shape: str, tokenizer, max_positions: int = 8192, seed: int = 0) -> nn.Module:
    """A randomly initialised ModernBERT masked LM of a SHAPES size (vocab 50368 as published)."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    torch.manual_seed(seed)
    config = ModernBertConfig(
        vocab_size=max(MODERNBERT_VOCAB, len(tokenizer)), max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id, **SHAPES[shape])
    return ModernBertForMaskedLM(config).eval()


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


# ----------------------------------------------------------------------------- GPU path (gpu_path.py)
class BudgetRun:
    """A benchmark under a time budget, whose JSON is rewritten after every measurement (gpu_path.py)."""

    def __init__(self, budget_s: float, output: str | None) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.output = output
        self.document: dict = {"benchmark": "gpu_path", "scoring": [], "training": [], "sweep": [], "skipped": [],
                               "errors": [], "notes": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.document["elapsed_s"] = time.monotonic() - self.start
        write_json(self.output, self.document)

    def skip(self, what: str, reason: str) -> None:
        self.document["skipped"].append({"what": what, "reason": reason})
        print(f"  skipped {what}: {reason}", file=sys.stderr)
        self.save()

    def error(self, what: str, error: BaseException) -> None:
        self.document["errors"].append({"what": what, "error": f"{type(error).__name__}: {error}",
                                        "traceback": traceback.format_exc(limit=8)})
        print(f"  {what} FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        self.save()


def hf_padded(model: nn.Module, rm, pairs: Sequence[Pair], batch_size: int) -> list[float]:
    """The plain loop: both orders, input order, padded batches, full logits, read at the mask."""
    from tinyrm.pairwise.data import pad_batch

    encodings = [rm.encode(p, a, b) for p, a, b in pairs] + [rm.encode(p, b, a) for p, a, b in pairs]
    answer = torch.tensor(rm.answer_ids, device=rm.device)
    pad_id = rm.tokenizer.pad_token_id or 0
    probs: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(encodings), batch_size):
            batch = {k: v.to(rm.device) for k, v in pad_batch(encodings[start : start + batch_size], pad_id).items()}
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


def train_flops_per_pair(shape: str, tokenizer, lengths: Sequence[int], trained_share: float) -> float:
    """Forward of both orders, plus 2x the forward share of the trained layers (backward), per pair."""
    with torch.device("meta"):  # shapes only, no memory
        model = random_modernbert(shape, tokenizer)
    mean = sum(lengths) / max(len(lengths), 1)
    return forward_flops(model, [int(mean)] * 2) * (1 + 2 * trained_share)


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


# ----------------------------------------------------------------------------- output
def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """``columns``: (key, header, format spec such as ``.2f`` / ``.1%`` / ``""``)."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "| " + " | ".join("---" if not f else "---:" for _, _, f in columns) + " |"]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("-" if value is None else format(value, fmt) if fmt else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: str | Path | None, document: dict) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def agreement(reference: Sequence[float], other: Sequence[float]) -> float:
    """Fraction of pairs with the same decision (P > 0.5) in both lists."""
    return sum((x > 0.5) == (y > 0.5) for x, y in zip(reference, other)) / max(len(reference), 1)


def accuracy(probs: Sequence[float]) -> float:
    """Pairs given chosen first: P(chosen better) > 0.5 is correct (a tie is wrong)."""
    return sum(p > 0.5 for p in probs) / max(len(probs), 1)


def pair_counts(values: Sequence[str], defaults: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """``--pairs 100`` (every model and set in ``defaults``) or ``--pairs base:long=4 embedded:mixed=256``."""
    out: dict[str, int] = {}
    for value in values:
        if "=" not in value:
            out.update({f"{m}:{s}": int(value) for m in defaults for s in defaults[m]})
        else:
            key, count = value.split("=", 1)
            out[key] = int(count)
    return out
