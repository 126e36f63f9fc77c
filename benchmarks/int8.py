"""int8 scoring on CPU against fp32 and bf16: pairs/s and decision agreement, in one run.

On the same pairs (dev/hhh by default, both orders as tinyrm scores them), with a trained model:

* ``fp32``, ``bf16``, ``int8`` (``precision="int8"``, ``int8_scheme="dynamic"``: torch.ao dynamic
  quantisation of the encoder linears) and ``int8-token`` (``int8_scheme="per-token"``: int8 matmuls
  with one activation scale per token, tinyrm.inference.quantize), each timed on the plain path
  (``recheck_margin=0``);
* ``...+guard``: bf16 and the int8 schemes with the default ``recheck_margin`` (0.01: pairs whose P
  is within 0.01 of 0.5 re-scored in fp32), i.e. what ``--precision`` gives by default;
* per row: pairs/s, tokens/s, speed-up over fp32 and over bf16, peak RSS above the start, decisions
  that agree with fp32 (P > 0.5), max |dP| against fp32, accuracy (chosen first: P > 0.5 is right),
  and for the guarded rows how many pairs were re-scored;
* a guard sweep (``--guard-margins``), computed from the plain rows without re-running: agreement
  when pairs within each margin take their fp32 P, the fraction re-scored, and the pairs/s that
  costs, estimated as 1 / (1 / plain rate + fraction / fp32 rate).

Targets (issue 13): >= 99% agreement with fp32, >= 1.5x bf16 pairs/s. An untrained model (the
embedded default) has P ~ 0.5 everywhere, so its agreement says nothing: pass ``--model PATH``.

    python benchmarks/int8.py --model runs/shared                       # all 221 dev/hhh pairs
    python benchmarks/int8.py --model runs/shared --pairs 64 --repeats 2
    python benchmarks/int8.py --pairs 4                                 # smoke run (embedded model)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import speedlib  # noqa: E402
import torch  # noqa: E402

from tinyrm.inference.engine import InferenceConfig  # noqa: E402
from tinyrm.inference.quantize import quantized_linear_count  # noqa: E402
from tinyrm.pairwise.model import RewardModel  # noqa: E402

# (row name, precision, int8 scheme, recheck margin or None for the engine default)
METHODS = [("fp32", "fp32", "dynamic", 0.0), ("bf16", "bf16", "dynamic", 0.0), ("int8", "int8", "dynamic", 0.0),
           ("int8-token", "int8", "per-token", 0.0), ("bf16+guard", "bf16", "dynamic", None),
           ("int8+guard", "int8", "dynamic", None), ("int8-token+guard", "int8", "per-token", None)]


def run_method(rm: RewardModel, pairs, precision: str, scheme: str, margin: float | None,
               batch_size: int) -> list[float]:
    rm.engine.config.precision = precision
    rm.engine.config.int8_scheme = scheme
    rm.engine.config.recheck_margin = InferenceConfig.recheck_margin if margin is None else margin
    rm.encoder._cache.clear()  # tokenisation is part of the measured work
    return rm.compare_batch(pairs, batch_size=batch_size)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="a trained tinyrm model (default: the untrained embedded one)")
    p.add_argument("--data", default=None, help="JSONL pairs (default ../shared/data/dev/hhh.jsonl)")
    p.add_argument("--pairs", type=int, default=0, help="first N pairs only (0 = all)")
    p.add_argument("--methods", nargs="+", default=[m[0] for m in METHODS], choices=[m[0] for m in METHODS])
    p.add_argument("--repeats", type=int, default=1, help="time each method N times, keep the fastest")
    p.add_argument("--guard-margins", nargs="*", type=float, default=[0.01, 0.02, 0.05, 0.1],
                   help="recheck margins of the computed guard sweep")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--note", default="")
    p.add_argument("--output", default="runs/bench/int8.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "fp32" not in args.methods:
        args.methods.insert(0, "fp32")  # the reference of every comparison
    pairs, source = speedlib.dev_pairs(args.data, args.pairs)
    rm = RewardModel.from_pretrained(args.model, device="cpu", max_length=args.max_length)
    tokens = sum(len(rm.encode(q, x, y).input_ids) for q, a, b in pairs for x, y in ((a, b), (b, a)))
    info = speedlib.machine_info()
    print(f"{rm.name} on {len(pairs)} pairs from {source}; {info['threads']} threads, load "
          f"{info['load_average_1m']:.1f}, native bf16 {info['cpu_bf16_native']}", file=sys.stderr)
    rows, probs = [], {}
    for name, precision, scheme, margin in METHODS:
        if name not in args.methods:
            continue
        run_method(rm, pairs[:2], precision, scheme, margin, args.batch_size)  # warm-up: the copy, first kernels
        best = None
        for _ in range(max(1, args.repeats)):
            before = rm.engine.rechecked
            t = speedlib.timed(run_method, rm, pairs, precision, scheme, margin, args.batch_size)
            if best is None or t.seconds < best[0].seconds:
                best = (t, rm.engine.rechecked - before)
        t, rechecked = best
        seconds, out = t.seconds, t.result
        probs[name] = out
        row = {"method": name, "precision": precision, "int8_scheme": scheme if precision == "int8" else None,
               "recheck_margin": rm.engine.config.recheck_margin,
               "pairs": len(pairs), "seconds": seconds, "cpu_seconds": t.cpu_seconds,
               "pairs_per_s": len(pairs) / seconds, "tokens_per_s": tokens / seconds, "peak_mib": t.peak_mib,
               "peak_total_mib": t.peak_total_mib, "rechecked_pairs": rechecked,
               "accuracy": speedlib.accuracy(out)}
        if precision == "int8":
            row["quantized_linears"] = quantized_linear_count(rm.engine.prepared().model)
        rows.append(row)
        print(f"  {name}: {row['pairs_per_s']:.2f} pairs/s ({seconds:.1f}s)", file=sys.stderr)
    by = {r["method"]: r for r in rows}
    for row in rows:
        ref = probs["fp32"]
        row["agreement_fp32"] = speedlib.agreement(ref, probs[row["method"]])
        row["max_abs_dp"] = max(abs(x - y) for x, y in zip(ref, probs[row["method"]]))
        row["speedup_vs_fp32"] = row["pairs_per_s"] / by["fp32"]["pairs_per_s"]
        if "bf16" in by:
            row["speedup_vs_bf16"] = row["pairs_per_s"] / by["bf16"]["pairs_per_s"]
    sweep = []
    for row in rows:
        if row["recheck_margin"] or row["method"] == "fp32":
            continue
        mine, ref = probs[row["method"]], probs["fp32"]
        for margin in args.guard_margins:
            close = [abs(p - 0.5) < margin for p in mine]
            guarded = [r if c else m for m, r, c in zip(mine, ref, close)]
            fraction = sum(close) / len(close)
            rate = 1.0 / (1.0 / row["pairs_per_s"] + fraction / by["fp32"]["pairs_per_s"])
            sweep.append({"method": row["method"], "recheck_margin": margin, "rescored_fraction": fraction,
                          "agreement_fp32": speedlib.agreement(ref, guarded), "est_pairs_per_s": rate,
                          "est_speedup_vs_fp32": rate / by["fp32"]["pairs_per_s"],
                          "est_speedup_vs_bf16": rate / by["bf16"]["pairs_per_s"] if "bf16" in by else None,
                          "accuracy": speedlib.accuracy(guarded)})
    document = {"benchmark": "int8", "model": rm.name, "data": source, "machine": info, "note": args.note,
                "config": vars(args), "rows": rows, "guard_sweep": sweep,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    speedlib.write_json(args.output, document)
    print(f"\n{rm.name}, {len(pairs)} pairs ({tokens / len(pairs):.0f} tokens/pair, both orders) from {source}; "
          f"load average {os.getloadavg()[0]:.1f} at the end\n")
    print(speedlib.markdown_table(rows, [
        ("method", "method", ""), ("pairs_per_s", "pairs/s", ".2f"), ("tokens_per_s", "tokens/s", ".0f"),
        ("speedup_vs_fp32", "x fp32", ".2f"), ("speedup_vs_bf16", "x bf16", ".2f"),
        ("agreement_fp32", "agreement with fp32", ".1%"), ("max_abs_dp", "max abs dP", ".4f"),
        ("rechecked_pairs", "re-scored in fp32", "d"), ("accuracy", "accuracy", ".3f"),
        ("peak_mib", "peak MiB", ".0f")]))
    if sweep:
        print("\nguard sweep (computed from the plain rows: pairs within the margin take their fp32 P)\n")
        print(speedlib.markdown_table(sweep, [
            ("method", "method", ""), ("recheck_margin", "margin", ".2f"), ("rescored_fraction", "re-scored", ".1%"),
            ("agreement_fp32", "agreement with fp32", ".1%"), ("est_pairs_per_s", "est. pairs/s", ".2f"),
            ("est_speedup_vs_bf16", "est. x bf16", ".2f"), ("accuracy", "accuracy", ".3f")]))
    if args.output:
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
