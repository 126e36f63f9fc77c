"""Helpers shared by the speed benchmarks (roofline, int8, adaptive_order, train_throughput, gpu_path; the GPU
path's own helpers are in ``gpu_lib.py``).

Not a benchmark itself. Kept free of psutil / rich / datasets / the embedded model at import time,
because ``gpu_path.py`` runs on a lent GPU machine that has only torch, transformers, peft and
accelerate besides the repository copy.
"""

from __future__ import annotations

import gc
import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
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


def matmul_peak(dtype: torch.dtype, n: int | None = None, repeats: int = 5, products: int = 16,
                warmup_s: float = 0.5) -> float:
    """FLOP/s of an n x n x n ``torch.matmul`` in ``dtype`` (n: 2048 CPU, 8192 GPU). On CUDA ``warmup_s`` of
    products first (kernel selection, clocks), then ``products`` back-to-back products timed with CUDA events:
    one queue of launches, so no host gap or single-launch jitter enters the peak. On the CPU the best of
    ``repeats`` single products."""
    dev = device()
    n = n or (8192 if dev.type == "cuda" else 2048)
    a = torch.randn(n, n, dtype=dtype, device=dev)
    b = torch.randn(n, n, dtype=dtype, device=dev)
    out = torch.matmul(a, b)  # warm-up: kernel selection
    if dev.type == "cuda":
        sync()
        start = time.perf_counter()
        while time.perf_counter() - start < warmup_s:
            for _ in range(4):
                torch.matmul(a, b, out=out)
            sync()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(products):
            torch.matmul(a, b, out=out)
        end.record()
        end.synchronize()
        best = begin.elapsed_time(end) / 1e3 / products  # ms -> s per product
    else:
        best = float("inf")
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            torch.matmul(a, b)
            sync()
            best = min(best, time.perf_counter() - start)
    del a, b, out
    return 2 * n**3 / best


# Dense bf16 tensor-core peak on NVIDIA's datasheets (no sparsity): H100 SXM5 and H200 (SXM) alike.
SPEC_BF16_DENSE = 989.4e12


def spec_bf16_peak(name: str | None) -> float | None:
    """The datasheet's dense bf16 FLOP/s for a CUDA device name, where it is an H100 SXM or an H200; None for
    any other card (PCIe and NVL parts run other clocks and power: another peak)."""
    upper = (name or "").upper()
    if "PCIE" in upper or "NVL" in upper:
        return None
    if "H200" in upper or ("H100" in upper and ("SXM" in upper or "HBM3" in upper)):  # "H100 80GB HBM3": SXM5
        return SPEC_BF16_DENSE
    return None


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
def random_modernbert(shape: str, tokenizer, max_positions: int = 8192, seed: int = 0) -> nn.Module:
    """A randomly initialised ModernBERT masked LM of a SHAPES size (vocab 50368 as published)."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    torch.manual_seed(seed)
    config = ModernBertConfig(
        vocab_size=max(MODERNBERT_VOCAB, len(tokenizer)), max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id, **SHAPES[shape])
    return ModernBertForMaskedLM(config).eval()


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
