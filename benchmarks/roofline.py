"""Roofline of tinyrm's scoring path: achieved GFLOP/s and MFU against matmul peaks measured in the same run.

One run measures, on this machine:

* the fp32 and bf16 ``torch.matmul`` peak (square n x n matrices, best of a few, sampled at the
  start and at the end of the run; the best sample is the peak, so a busy spell cannot inflate MFU);
* for each model (``embedded``: the default MiniLM; ``base``: a random ModernBERT-base-shaped MLM,
  hidden 768, 22 layers, 12 heads, intermediate 1152, vocab 50368) and each input set (short:
  encoded <= 96 tokens; mixed: the shared data as it comes, 32-512 tokens; long: 512 tokens, earlier
  dialogue turns prepended), ``RewardModel.compare_batch`` (both orders, length-sorted token-budget
  batches, logits at the mask) in bf16 and in fp32: pairs/s, tokens/s, achieved GFLOP/s (useful
  FLOPs: real tokens only, attention within ModernBERT's local windows, head at the mask; see
  ``speedlib.forward_flops``), MFU against the bf16 and the fp32 peak, and peak RSS above the start;
* ``--profile``: a torch.profiler op table of one set (default: base-shaped model, mixed inputs,
  bf16), with the share of time in matmuls, attention and everything else: what bounds MFU.

JSON to ``--output`` (default runs/bench/roofline.json), a markdown table on stdout.

    python benchmarks/roofline.py                                   # bounded default (minutes on 2 cores)
    python benchmarks/roofline.py --models base --sets mixed --pairs base:mixed=24 --profile
    python benchmarks/roofline.py --pairs 4 --no-flops-check        # smoke run
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import speedlib  # noqa: E402
import torch  # noqa: E402

from tinyrm.config import RewardConfig  # noqa: E402
from tinyrm.pairwise.model import RewardModel  # noqa: E402

DEFAULT_PAIRS = {"embedded": {"short": 64, "mixed": 48, "long": 16}, "base": {"short": 16, "mixed": 12, "long": 4}}
PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")
ATTENTION_MARK = "scaled_dot_product"


def build(name: str, max_length: int) -> RewardModel:
    """The embedded model, or a random ModernBERT-base-shaped one with the embedded tokenizer."""
    if name == "embedded":
        return RewardModel.from_pretrained("default", device="cpu" if not torch.cuda.is_available() else None,
                                           max_length=max_length)
    from transformers import AutoTokenizer

    from tinyrm.backbone import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    mlm = speedlib.random_modernbert("base", tokenizer)
    rm = RewardModel(mlm, tokenizer, RewardConfig(max_length=max_length, base_model="random ModernBERT-base shape"))
    rm.name = "base-shaped ModernBERT (random)"
    return rm


def score(rm: RewardModel, pairs: Sequence, precision: str, batch_size: int) -> list[float]:
    rm.engine.config.precision = precision
    rm.engine.config.recheck_margin = 0.0  # the plain path (a random model's pairs are all near-ties)
    rm.encoder._cache.clear()  # tokenisation is part of the measured work
    return rm.compare_batch(pairs, batch_size=batch_size)


def lengths_of(rm: RewardModel, pairs: Sequence) -> list[int]:
    return [len(rm.encode(p, x, y).input_ids) for p, a, b in pairs for x, y in ((a, b), (b, a))]


def profile(rm: RewardModel, pairs: Sequence, precision: str, batch_size: int, rows: int = 25) -> dict:
    """torch.profiler over one scoring call; op table printed, shares returned."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    score(rm, pairs[:2], precision, batch_size)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities, record_shapes=False) as prof:
        score(rm, pairs, precision, batch_size)
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS or "gemm" in e.key.lower())
    attention = sum(e.self_cpu_time_total for e in events if ATTENTION_MARK in e.key)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return {"pairs": len(pairs), "precision": precision, "matmul_share": matmul / total,
            "attention_share": attention / total, "other_share": 1 - (matmul + attention) / total,
            "top_ops": [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls": e.count}
                        for e in top]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["embedded", "base"], choices=list(DEFAULT_PAIRS))
    p.add_argument("--sets", nargs="+", default=["short", "mixed", "long"], choices=["short", "mixed", "long"])
    p.add_argument("--pairs", nargs="*", default=[], help="pairs per set: N or MODEL:SET=N")
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=list(PRECISIONS))
    p.add_argument("--max-length", type=int, default=512, help="encoder max_length (MiniLM has 512 positions)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per forward pass cap")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="padded tokens per forward pass")
    p.add_argument("--attention", nargs="+", default=["auto"], choices=["auto", "packed", "padded"],
                   help="engine.config.attention per row (auto: what users get; packed on the CPU); the profile "
                        "runs auto")
    p.add_argument("--peak-n", type=int, default=None, help="matmul size for the peak (default 2048 CPU, 8192 GPU)")
    p.add_argument("--profile", action="store_true", help="torch.profiler op table of --profile-model/--profile-set")
    p.add_argument("--profile-model", default="base", choices=list(DEFAULT_PAIRS))
    p.add_argument("--profile-set", default="mixed", choices=["short", "mixed", "long"])
    p.add_argument("--profile-precision", default="bf16", choices=list(PRECISIONS))
    p.add_argument("--no-flops-check", dest="flops_check", action="store_false",
                   help="skip the FLOP-count cross-check against tinyrm.tools.flops (one eager forward per model)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'quiet machine')")
    p.add_argument("--output", default="runs/bench/roofline.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    counts = speedlib.pair_counts(args.pairs, DEFAULT_PAIRS)
    info = speedlib.machine_info()
    peak = {k: speedlib.matmul_peak(dtype, args.peak_n) for k, dtype in PRECISIONS.items()}
    print(f"{info['device']}, {info['threads']} threads, load {info['load_average_1m']:.1f}; matmul peak "
          f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s", file=sys.stderr)
    pool, source = speedlib.pool_pairs()
    rows: list[dict] = []
    document = {"benchmark": "roofline", "machine": info, "note": args.note, "data": source, "config": vars(args)}
    for name in args.models:
        rm = build(name, args.max_length)
        if args.max_batch_tokens:
            rm.engine.config.max_batch_tokens = args.max_batch_tokens
        wanted = {s: counts.get(f"{name}:{s}", DEFAULT_PAIRS[name][s]) for s in args.sets}
        sets = speedlib.length_sets(rm.encoder, pool, wanted, long_tokens=args.max_length)
        if args.flops_check:
            document.setdefault("flops_check", {})[name] = speedlib.flops_check(rm.model, rm.tokenizer)
        for inputs in args.sets:
            pairs = sets[inputs]
            if not pairs:
                print(f"  {name}/{inputs}: no pairs", file=sys.stderr)
                continue
            lengths = lengths_of(rm, pairs)
            flops = speedlib.forward_flops(rm.model, lengths)
            for attention, precision in [(a, pr) for a in args.attention for pr in args.precisions]:
                rm.engine.config.attention = attention
                score(rm, pairs[:2], precision, args.batch_size)  # warm-up: the bf16 copy, first kernels
                t = speedlib.timed(score, rm, pairs, precision, args.batch_size)
                seconds, achieved = t.seconds, flops / t.seconds
                row = {"model": name, "inputs": inputs, "precision": precision, "pairs": len(pairs),
                       "attention": "packed" if rm.engine.uses_packed() else "padded",
                       "tokens_per_pair": sum(lengths) / len(pairs), "seconds": seconds,
                       "cpu_seconds": t.cpu_seconds, "pairs_per_s": len(pairs) / seconds,
                       "tokens_per_s": sum(lengths) / seconds, "gflops": flops / 1e9, "gflop_per_s": achieved / 1e9,
                       "peak_mib": t.peak_mib, "peak_total_mib": t.peak_total_mib}
                rows.append(row)
                print(f"  {name}/{inputs}/{precision}/{row['attention']}: {row['pairs_per_s']:.2f} pairs/s, "
                      f"{row['gflop_per_s']:.0f} GFLOP/s", file=sys.stderr)
        if args.profile and name == args.profile_model and sets.get(args.profile_set):
            rm.engine.config.attention = "auto"
            document["profile"] = {"model": name, "inputs": args.profile_set,
                                   **profile(rm, sets[args.profile_set], args.profile_precision, args.batch_size)}
        del rm
        gc.collect()
    for key, dtype in PRECISIONS.items():  # the best of a start and an end sample
        peak[key] = max(peak[key], speedlib.matmul_peak(dtype, args.peak_n))
    for row in rows:
        row["mfu_bf16_peak"] = row["gflop_per_s"] * 1e9 / peak["bf16"]
        row["mfu_fp32_peak"] = row["gflop_per_s"] * 1e9 / peak["fp32"]
        row["mfu_own_peak"] = row["gflop_per_s"] * 1e9 / peak[row["precision"]]
    document.update(peak_flops=peak, rows=rows, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    speedlib.write_json(args.output, document)
    print(f"\nmatmul peak (best of start and end): bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s, fp32 "
          f"{peak['fp32'] / 1e9:.0f} GFLOP/s; load average {os.getloadavg()[0]:.1f} at the end\n")
    print(speedlib.markdown_table(rows, [
        ("model", "model", ""), ("inputs", "inputs", ""), ("precision", "precision", ""),
        ("attention", "attention", ""), ("pairs", "pairs", "d"),
        ("tokens_per_pair", "tokens/pair", ".0f"), ("pairs_per_s", "pairs/s", ".2f"),
        ("tokens_per_s", "tokens/s", ".0f"), ("gflop_per_s", "GFLOP/s", ".1f"),
        ("mfu_bf16_peak", "MFU vs bf16 peak", ".1%"), ("mfu_fp32_peak", "MFU vs fp32 peak", ".1%"),
        ("peak_mib", "peak MiB (+)", ".0f"), ("peak_total_mib", "peak RSS MiB", ".0f")]))
    if "profile" in document:
        prof = document["profile"]
        print(f"\nprofile ({prof['model']}/{prof['inputs']}/{prof['precision']}): matmul {prof['matmul_share']:.1%}, "
              f"attention {prof['attention_share']:.1%}, other {prof['other_share']:.1%} of op self time")
    for name, check in document.get("flops_check", {}).items():
        print(f"FLOP count check ({name}, L={check['length']}): analytic {check['analytic_full_attention'] / 1e9:.3f} "
              f"vs tinyrm.tools.flops exact {check['tinyrm_exact'] / 1e9:.3f} GFLOP (ratio {check['ratio']:.3f})")
    if args.output:
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
