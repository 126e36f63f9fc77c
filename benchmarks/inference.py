"""Inference speed of tinyrm against the obvious alternatives, measured side by side in one run.

Methods, on the same pairs (both orders of every pair, as tinyrm scores them by default):

* ``a-reference``: batch size 1, full-vocabulary logits over the whole sequence, fp32 (how the
  TinyRM reference code scores);
* ``b-hf-padded``: a plain padded Hugging Face loop at the same batch size as tinyrm, input order,
  ``model(**batch).logits`` then the mask row, fp32;
* ``c-tinyrm``: ``RewardModel.compare_batch`` (length-sorted token-budget batches, logits at the mask
  for the two answer ids only, inference mode, bf16 where native, token cache);
* extra rows: ``tinyrm-fp32`` (what bf16 buys), ``tinyrm-compile`` (``--compile``: ``engine.config.compile``
  with ``attention`` auto, so the packed forward's compiled layer regions on the CPU; warmed up at two sizes),
  ``onnxruntime`` (``--onnx``) and ``tinyrm-padded`` / ``tinyrm-packed`` (``--packed``: the same
  engine with ``attention`` forced, no padding at all in the packed one; ``inference.packed``),
  each only when asked, to decide whether they are worth keeping.

MFU = useful forward FLOPs per second (real tokens only, attention within each layer's window, the
MLM head at the mask only) / a bf16 (and fp32) matmul peak measured in the same run.

Default run is bounded (a few minutes on 2 CPU cores); scale with ``--pairs`` / ``--ref-pairs``.
    python benchmarks/inference.py                 # embedded + base-shaped, short/mixed/long
    python benchmarks/inference.py --models embedded --sets mixed --pairs 256
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import speedlib  # noqa: E402
import torch  # noqa: E402

from tinyrm.inference.batches import collate  # noqa: E402
from tinyrm.inference.precision import cpu_bf16_native  # noqa: E402
from tinyrm.pairwise.model import RewardModel  # noqa: E402
from tinyrm.prompt import ClozeEncoder, Encoded, get_template  # noqa: E402

DATA = speedlib.DATA
Pair = tuple[str, str, str]


# ----------------------------------------------------------------------------- data
def pair_sets(encoder: ClozeEncoder, n: dict[str, int], long_tokens: int, seed: int = 0) -> dict[str, list[Pair]]:
    """short (<= 128 tokens), mixed (the data as it comes) and long (>= ``long_tokens``) pairs."""
    if not DATA.is_dir():
        sys.exit(f"benchmarks/inference.py needs the shared data folder {DATA}")
    files = [*sorted((DATA / "train").glob("*.jsonl")), speedlib.DEV_HHH]
    pool = [pair for path in files for pair in speedlib.load_jsonl_pairs(path)]
    rng = random.Random(seed)
    rng.shuffle(pool)
    length = {p: len(encoder.encode(*p).input_ids) for p in pool[:4000]}
    sets = {
        "short": [p for p in length if length[p] <= 128][: n["short"]],
        "mixed": list(length)[: n["mixed"]],
    }
    # Long inputs: earlier turns of other real dialogues prepended as context until long enough.
    long: list[Pair] = []
    donors = iter(pool[4000:] + pool[:4000])
    for prompt, a, b in sorted(length, key=length.get, reverse=True)[: n["long"]]:
        context = prompt
        while len(encoder.encode(context, a, b).input_ids) < long_tokens:
            context = next(donors)[0] + "\n\n" + context
        long.append((context, a, b))
    sets["long"] = long
    return sets


# ----------------------------------------------------------------------------- models
def base_shaped_model(directory: Path) -> str:
    """A random ModernBERT-base-shaped MLM (22 layers, 768 hidden) with the embedded tokenizer."""
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertForMaskedLM

    from tinyrm.backbone import default_model_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(default_model_path())
    config = ModernBertConfig(
        vocab_size=tok.vocab_size, hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
        num_attention_heads=12, max_position_embeddings=8192, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, cls_token_id=tok.cls_token_id,
        sep_token_id=tok.sep_token_id,
    )
    ModernBertForMaskedLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


# ----------------------------------------------------------------------------- methods
@dataclass
class Row:
    model: str
    inputs: str
    method: str
    pairs: int
    seconds: float
    tokens: int
    flops: float
    peak_mib: float
    cpu_seconds: float = 0.0  # process CPU time: steadier than wall time on a shared machine
    pairs_per_s: float = 0.0
    tokens_per_s: float = 0.0
    mfu_bf16: float = 0.0
    mfu_fp32: float = 0.0
    note: str = ""


def both_orders(encoder: ClozeEncoder, pairs: Sequence[Pair]) -> list[Encoded]:
    return [encoder.encode(p, a, b) for p, a, b in pairs] + [encoder.encode(p, b, a) for p, a, b in pairs]


def reference_style(rm: RewardModel, encoder: ClozeEncoder, pairs: Sequence[Pair], batch_size: int) -> list[float]:
    """(a): one sequence at a time, full-vocabulary logits at every position, fp32."""
    return hf_padded(rm, encoder, pairs, batch_size=1)


def hf_padded(rm: RewardModel, encoder: ClozeEncoder, pairs: Sequence[Pair], batch_size: int) -> list[float]:
    """(b): the plain loop: tokenise, pad in input order, ``model(**batch).logits``, read the mask."""
    encodings = both_orders(encoder, pairs)
    pad_id = rm.tokenizer.pad_token_id or 0
    answer = torch.tensor(rm.answer_ids, device=rm.device)
    probs: list[float] = []
    with torch.no_grad():
        for start in range(0, len(encodings), batch_size):
            batch = {k: v.to(rm.device) for k, v in collate(encodings[start : start + batch_size], pad_id).items()}
            positions = batch.pop("mask_positions")
            logits = rm.model(**batch).logits  # [B, T, V]
            rows = torch.arange(len(positions), device=rm.device)
            probs += torch.softmax(logits[rows, positions][:, answer], dim=-1)[:, 0].tolist()
    n = len(pairs)
    return [(probs[i] + 1 - probs[n + i]) / 2 for i in range(n)]


def tinyrm_method(precision: str, compile_: bool = False, attention: str = "auto") -> Callable:
    def run(rm: RewardModel, encoder: ClozeEncoder, pairs: Sequence[Pair], batch_size: int) -> list[float]:
        rm.engine.config.precision = precision
        rm.engine.config.compile = compile_
        rm.engine.config.attention = attention
        rm.engine.config.recheck_margin = 0.0  # time the plain path (untrained models are all near-ties)
        rm.encoder._cache.clear()  # tokenisation is part of the measured work
        return rm.compare_batch(pairs, batch_size=batch_size)

    return run


def onnx_method(directory: Path) -> Callable:
    def run(rm: RewardModel, encoder: ClozeEncoder, pairs: Sequence[Pair], batch_size: int) -> list[float]:
        from tinyrm.inference.export import OnnxRewardModel

        if not hasattr(run, "model"):
            run.model = OnnxRewardModel.load(directory)
        run.model.encoder._cache.clear()
        return run.model.compare_batch(pairs, batch_size=batch_size)

    return run


# ----------------------------------------------------------------------------- driver
@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=lambda: ["embedded", "base"])
    sets: list[str] = field(default_factory=lambda: ["short", "mixed", "long"])
    pairs: dict[str, int] = field(default_factory=dict)  # per "model:set"
    ref_pairs: dict[str, int] = field(default_factory=dict)
    batch_size: int = 32
    max_batch_tokens: int | None = None
    long_tokens: int = 1024
    fp32_row: bool = True
    compile: bool = False
    onnx: bool = False
    packed: bool = False  # tinyrm-padded and tinyrm-packed rows (attention forced)
    only: list[str] | None = None  # run just these methods (e.g. the packed pair, without the slow a / b)
    agreement: bool = True
    agreement_model: str = "default"
    output: str | None = None


# Bounded default (a few minutes on 2 idle cores); the slow reference (a) runs on a prefix of the same pairs.
DEFAULT_PAIRS = {"embedded": {"short": 64, "mixed": 64, "long": 16}, "base": {"short": 16, "mixed": 12, "long": 2}}
DEFAULT_REF = {"embedded": {"short": 16, "mixed": 16, "long": 4}, "base": {"short": 4, "mixed": 4, "long": 1}}


def measure(name: str, inputs: str, method: str, fn: Callable, rm: RewardModel, encoder: ClozeEncoder,
            pairs: Sequence[Pair], batch_size: int, peak: dict[str, float]) -> tuple[Row, list[float]]:
    fn(rm, encoder, pairs[:2], batch_size)  # warm-up: prepare the bf16 copy, compile, first kernels
    if "compile" in method:  # a second size: torch.compile's dynamic-shape graphs, built outside the timing
        fn(rm, encoder, pairs[2:5], batch_size)
    lengths = [len(e.input_ids) for e in both_orders(encoder, pairs)]
    with speedlib.PeakMemory() as memory:
        speedlib.sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        probs = fn(rm, encoder, pairs, batch_size)
        speedlib.sync()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    flops = speedlib.forward_flops(rm.model, lengths)
    row = Row(name, inputs, method, len(pairs), seconds, sum(lengths), flops, memory.mib, cpu_seconds,
              pairs_per_s=len(pairs) / seconds, tokens_per_s=sum(lengths) / seconds,
              mfu_bf16=flops / seconds / peak["bf16"], mfu_fp32=flops / seconds / peak["fp32"])
    return row, probs


def _per_cpu(row: Row) -> float:
    return row.pairs / max(row.cpu_seconds, 1e-9)


def agreement(model: str, pairs: Sequence[Pair], batch_size: int, margin: float = 0.01) -> dict:
    """bf16 vs fp32 decisions (P > 0.5) on the same pairs, plain and with the fp32 recheck guard."""
    rm = RewardModel.from_pretrained(model)
    rm.engine.config.precision = "fp32"
    p32 = rm.compare_batch(pairs, batch_size=batch_size)
    rm.engine.config.precision = "bf16"
    rm.engine.config.recheck_margin = 0.0  # plain bf16 first
    p16 = rm.compare_batch(pairs, batch_size=batch_size)
    same = sum((x > 0.5) == (y > 0.5) for x, y in zip(p32, p16))
    rm.engine.config.recheck_margin = margin
    pg = rm.compare_batch(pairs, batch_size=batch_size)
    same_guarded = sum((x > 0.5) == (y > 0.5) for x, y in zip(p32, pg))
    return {"model": model, "pairs": len(pairs), "agreement": same / len(pairs),
            "recheck_margin": margin, "agreement_guarded": same_guarded / len(pairs),
            "rechecked_pairs": rm.engine.rechecked,
            "max_abs_diff": max(abs(x - y) for x, y in zip(p32, p16)),
            "accuracy_fp32": sum(x > 0.5 for x in p32) / len(pairs),
            "accuracy_bf16": sum(y > 0.5 for y in p16) / len(pairs)}


def run(config: BenchConfig) -> dict:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    torch.set_grad_enabled(False)
    peak = {"bf16": speedlib.matmul_peak(torch.bfloat16), "fp32": speedlib.matmul_peak(torch.float32)}
    console.print(f"device: {'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, "
                  f"threads {torch.get_num_threads()}, native bf16 {cpu_bf16_native()}, load avg "
                  f"{os.getloadavg()[0]:.1f}; matmul peak bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s, "
                  f"fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s")
    rows: list[Row] = []
    ratios: list[dict] = []
    tmp = tempfile.TemporaryDirectory(prefix="tinyrm-bench-")
    for name in config.models:
        path = "default" if name == "embedded" else base_shaped_model(Path(tmp.name) / "base")
        max_length = 512 if name == "embedded" else 2048  # MiniLM has 512 positions
        rm = RewardModel.from_pretrained(path, max_length=max_length)
        if config.max_batch_tokens:
            rm.engine.config.max_batch_tokens = config.max_batch_tokens
        template = get_template(rm.config.template)
        encoder = ClozeEncoder(rm.tokenizer, template, prefix=rm.config.prefix, max_length=max_length)
        counts = {s: config.pairs.get(f"{name}:{s}", DEFAULT_PAIRS[name][s]) for s in config.sets}
        refs = {s: config.ref_pairs.get(f"{name}:{s}", DEFAULT_REF[name][s]) for s in config.sets}
        sets = pair_sets(encoder, {s: counts.get(s, 0) for s in ("short", "mixed", "long")},
                         long_tokens=min(config.long_tokens, max_length))
        methods: list[tuple[str, Callable, int]] = [
            ("a-reference", reference_style, 0), ("b-hf-padded", hf_padded, 1), ("c-tinyrm", tinyrm_method("auto"), 1),
        ]
        if config.fp32_row:
            methods.append(("tinyrm-fp32", tinyrm_method("fp32"), 1))
        if config.packed:
            methods += [("tinyrm-padded", tinyrm_method("auto", attention="padded"), 1),
                        ("tinyrm-packed", tinyrm_method("auto", attention="packed"), 1)]
        if config.compile:  # after the packed row, which it is compared with
            methods.append(("tinyrm-compile", tinyrm_method("auto", compile_=True), 1))
        if config.onnx:
            from tinyrm.inference.export import ExportConfig, export_onnx

            onnx_dir = Path(tmp.name) / f"onnx-{name}"
            export_onnx(ExportConfig(model=path, output=str(onnx_dir), max_length=max_length), rm=rm)
            methods.append(("onnxruntime", onnx_method(onnx_dir), 1))
        if config.only:
            methods = [m for m in methods if m[0] in config.only]
        for inputs in config.sets:
            pairs = sets[inputs]
            by_method: dict[str, Row] = {}
            reference_probs: list[float] | None = None
            seen: dict[str, list[float]] = {}
            for method, fn, full in methods:
                subset = pairs if full else pairs[: refs[inputs]]
                row, probs = measure(name, inputs, method, fn, rm, encoder, subset, config.batch_size, peak)
                seen[method] = probs
                if method == "b-hf-padded":
                    reference_probs = probs
                against = {"tinyrm-packed": "tinyrm-padded", "tinyrm-compile": "tinyrm-packed"}.get(method)
                if against in seen:
                    row.note = f"max |dP| vs {against} {max(abs(x - y) for x, y in zip(seen[against], probs)):.1e}"
                elif reference_probs is not None and method in ("c-tinyrm", "onnxruntime", "tinyrm-compile"):
                    flips = sum((x > 0.5) != (y > 0.5) for x, y in zip(reference_probs, probs))
                    row.note = f"{flips} flip(s) vs b"
                rows.append(row)
                by_method[method] = row
                console.print(f"  {name}/{inputs}/{method}: {row.pairs_per_s:.2f} pairs/s "
                              f"({row.pairs} pairs, {row.seconds:.1f}s)")
            any_row = next(iter(by_method.values()))
            ratios.append({"model": name, "inputs": inputs, "mean_tokens_per_pair": any_row.tokens / any_row.pairs})
            if {"a-reference", "b-hf-padded", "c-tinyrm"} <= set(by_method):
                c = by_method["c-tinyrm"]
                ratios[-1].update({"c/a": c.pairs_per_s / by_method["a-reference"].pairs_per_s,
                                   "c/b": c.pairs_per_s / by_method["b-hf-padded"].pairs_per_s,
                                   "c/a cpu": _per_cpu(c) / _per_cpu(by_method["a-reference"]),
                                   "c/b cpu": _per_cpu(c) / _per_cpu(by_method["b-hf-padded"])})
            if {"tinyrm-packed", "tinyrm-padded"} <= set(by_method):
                packed, padded = by_method["tinyrm-packed"], by_method["tinyrm-padded"]
                ratios[-1]["packed/padded"] = packed.pairs_per_s / padded.pairs_per_s
                ratios[-1]["packed/padded cpu"] = _per_cpu(packed) / _per_cpu(padded)
        del rm
        gc.collect()
    tmp.cleanup()
    # Measure the peak again and keep the best: on a shared machine one sample can land in a busy spell.
    for key, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        peak[key] = max(peak[key], speedlib.matmul_peak(dtype))
    for r in rows:
        r.mfu_bf16, r.mfu_fp32 = r.flops / r.seconds / peak["bf16"], r.flops / r.seconds / peak["fp32"]
    console.print(f"matmul peak (best of start and end): bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s, "
                  f"fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s")

    table = Table(title="tinyrm inference benchmark (one run, same machine)")
    for column in ("model", "inputs", "method", "pairs", "pairs/s", "tokens/s", "pairs/cpu-s", "peak MiB", "MFU bf16",
                   "MFU fp32", "note"):
        table.add_column(column, justify="left" if column in ("model", "inputs", "method", "note") else "right")
    for r in rows:
        table.add_row(r.model, r.inputs, r.method, str(r.pairs), f"{r.pairs_per_s:.2f}", f"{r.tokens_per_s:.0f}",
                      f"{_per_cpu(r):.2f}", f"{r.peak_mib:.0f}", f"{100 * r.mfu_bf16:.1f}%", f"{100 * r.mfu_fp32:.1f}%",
                      r.note)
    console.print(table)
    ratio_table = Table(title="speed-up of tinyrm (pairs/s ratios)")
    for column in ("model", "inputs", "tokens/pair", "c/a", "c/b", "c/a cpu-time", "c/b cpu-time"):
        ratio_table.add_column(column)
    for r in (r for r in ratios if "c/a" in r):
        ratio_table.add_row(r["model"], r["inputs"], f"{r['mean_tokens_per_pair']:.0f}", f"{r['c/a']:.1f}x",
                            f"{r['c/b']:.1f}x", f"{r['c/a cpu']:.1f}x", f"{r['c/b cpu']:.1f}x")
    console.print(ratio_table)
    for r in ratios:
        if "packed/padded" in r:
            console.print(f"{r['model']}/{r['inputs']}: tinyrm-packed / tinyrm-padded {r['packed/padded']:.3f}x "
                          f"(per CPU-second {r['packed/padded cpu']:.3f}x)")

    result = {"peak_flops": peak, "threads": torch.get_num_threads(), "rows": [asdict(r) for r in rows],
              "ratios": ratios, "config": asdict(config)}
    if config.agreement:
        dev = speedlib.load_jsonl_pairs(speedlib.DEV_HHH)
        result["agreement"] = agree = agreement(config.agreement_model, dev, config.batch_size)
        console.print(f"bf16 vs fp32 on dev/hhh ({agree['pairs']} pairs, model {agree['model']}): "
                      f"{100 * agree['agreement']:.1f}% same decisions, max |dP| {agree['max_abs_diff']:.4f}; "
                      f"with recheck_margin {agree['recheck_margin']}: {100 * agree['agreement_guarded']:.1f}% "
                      f"({agree['rechecked_pairs']} pairs re-scored in fp32); "
                      f"accuracy fp32 {agree['accuracy_fp32']:.3f} / bf16 {agree['accuracy_bf16']:.3f}")
    if config.output:
        Path(config.output).parent.mkdir(parents=True, exist_ok=True)
        Path(config.output).write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {config.output}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["embedded", "base"], choices=["embedded", "base"])
    p.add_argument("--sets", nargs="+", default=["short", "mixed", "long"], choices=["short", "mixed", "long"])
    p.add_argument("--pairs", nargs="*", default=[], help="pairs for b/c: N or MODEL:SET=N")
    p.add_argument("--ref-pairs", nargs="*", default=[], help="pairs for the slow reference (a): N or MODEL:SET=N")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-batch-tokens", type=int, default=None)
    p.add_argument("--long-tokens", type=int, default=1024)
    p.add_argument("--no-fp32-row", dest="fp32_row", action="store_false")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile")
    p.add_argument("--onnx", action="store_true", help="also measure ONNX Runtime (needs the onnx extra)")
    p.add_argument("--packed", action="store_true", help="also measure attention packed against padded")
    p.add_argument("--only", nargs="+", default=None, metavar="METHOD",
                   help="measure only these methods (e.g. --packed --only tinyrm-padded tinyrm-packed)")
    p.add_argument("--no-agreement", dest="agreement", action="store_false")
    p.add_argument("--agreement-model", default="default", help="model for the bf16/fp32 check on dev/hhh")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--output", default="runs/bench/inference.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = BenchConfig(models=args.models, sets=args.sets, pairs=speedlib.pair_counts(args.pairs, DEFAULT_PAIRS),
                         ref_pairs=speedlib.pair_counts(args.ref_pairs, DEFAULT_PAIRS), batch_size=args.batch_size,
                         max_batch_tokens=args.max_batch_tokens, long_tokens=args.long_tokens,
                         fp32_row=args.fp32_row, compile=args.compile, onnx=args.onnx, packed=args.packed,
                         only=args.only, agreement=args.agreement,
                         agreement_model=args.agreement_model, output=args.output)
    run(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
