"""Adaptive order against full both-orders scoring: second passes saved, speed-up, agreement, accuracy.

On the same pairs (dev/hhh by default) with a trained model, in one run:

* ``both``: ``compare_batch(both_orders=True)``, the reference (both orders of every pair);
* ``one``: ``both_orders=False`` (the given order only: no position-bias removal);
* ``auto m``: ``both_orders="auto", order_margin=m`` for each ``--margins`` value: the swapped order
  only for pairs whose first P is within m of 0.5 (tinyrm.inference.adaptive);
* per row: pairs/s, speed-up over ``both``, the fraction of pairs that got the second pass (and the
  fraction saved), decisions that agree with ``both`` (P > 0.5), max |dP| against ``both``, and
  accuracy (pairs are given chosen first: P > 0.5 is right).

The pairs are scored chosen-first, so a model with a position bias towards choice 0 looks better in
``one`` than it is; ``--shuffle-sides`` presents a seeded half of the pairs rejected-first (and
counts P < 0.5 as right there) to remove that. Precision is the engine default unless
``--precision`` (bf16 here when the CPU has it; the recheck guard stays at its default).

    python benchmarks/adaptive_order.py --model runs/shared                     # all 221 dev/hhh pairs
    python benchmarks/adaptive_order.py --model runs/shared --margins 0.1 0.2 0.3 --repeats 2
    python benchmarks/adaptive_order.py --pairs 6 --margins 0.25                # smoke run
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import speedlib  # noqa: E402
import torch  # noqa: E402

from tinyrm.inference.adaptive import OrderStats  # noqa: E402
from tinyrm.pairwise.model import RewardModel  # noqa: E402


def run(rm: RewardModel, pairs, both_orders, margin, batch_size: int) -> list[float]:
    rm.encoder._cache.clear()  # tokenisation is part of the measured work
    kwargs = {"order_margin": margin} if both_orders == "auto" else {}
    return rm.compare_batch(pairs, batch_size=batch_size, both_orders=both_orders, **kwargs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="a trained tinyrm model (default: the untrained embedded one)")
    p.add_argument("--data", default=None, help="JSONL pairs (default ../shared/data/dev/hhh.jsonl)")
    p.add_argument("--pairs", type=int, default=0, help="first N pairs only (0 = all)")
    p.add_argument("--margins", nargs="+", type=float, default=[0.05, 0.1, 0.15, 0.25, 0.35])
    p.add_argument("--precision", default=None, choices=["auto", "bf16", "fp32", "int8"])
    p.add_argument("--shuffle-sides", action="store_true", help="present a seeded half of the pairs rejected-first")
    p.add_argument("--repeats", type=int, default=1, help="time each row N times, keep the fastest")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--note", default="")
    p.add_argument("--output", default="runs/bench/adaptive_order.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs, source = speedlib.dev_pairs(args.data, args.pairs)
    chosen_first = [True] * len(pairs)
    if args.shuffle_sides:
        rng = random.Random(0)
        chosen_first = [rng.random() < 0.5 for _ in pairs]
        pairs = [(q, a, b) if first else (q, b, a) for (q, a, b), first in zip(pairs, chosen_first)]
    rm = RewardModel.from_pretrained(args.model, precision=args.precision)
    info = speedlib.machine_info()
    print(f"{rm.name} on {len(pairs)} pairs from {source}; precision {rm.engine.config.precision}, "
          f"{info['threads']} threads, load {info['load_average_1m']:.1f}", file=sys.stderr)

    def correct(probs) -> float:
        return sum((q > 0.5) == first for q, first in zip(probs, chosen_first)) / len(probs)

    plans = [("both", True, None), ("one", False, None)] + [(f"auto {m:g}", "auto", m) for m in args.margins]
    rows, probs = [], {}
    for name, both_orders, margin in plans:
        run(rm, pairs[:2], both_orders, margin, args.batch_size)  # warm-up: the bf16 copy, first kernels
        best = None
        for _ in range(max(1, args.repeats)):
            before = OrderStats(rm.engine.order_stats.pairs, rm.engine.order_stats.second_passes)
            t = speedlib.timed(run, rm, pairs, both_orders, margin, args.batch_size)
            if best is None or t.seconds < best[0].seconds:
                best = (t, rm.engine.order_stats - before)
        t, stats = best
        seconds, cpu, out = t.seconds, t.cpu_seconds, t.result
        probs[name] = out
        second = {"both": 1.0, "one": 0.0}.get(name, stats.second_pass_fraction)
        rows.append({"method": name, "order_margin": margin, "pairs": len(pairs), "seconds": seconds,
                     "cpu_seconds": cpu, "pairs_per_s": len(pairs) / seconds, "second_pass_fraction": second,
                     "saved_fraction": 1.0 - second, "accuracy": correct(out)})
        print(f"  {name}: {len(pairs) / seconds:.2f} pairs/s, second passes {second:.1%}", file=sys.stderr)
    ref = rows[0]
    for row in rows:
        row["speedup_vs_both"] = row["pairs_per_s"] / ref["pairs_per_s"]
        row["agreement_both"] = speedlib.agreement(probs["both"], probs[row["method"]])
        row["max_abs_dp"] = max(abs(x - y) for x, y in zip(probs["both"], probs[row["method"]]))
    document = {"benchmark": "adaptive_order", "model": rm.name, "data": source, "machine": info,
                "precision": rm.engine.config.precision, "note": args.note, "config": vars(args), "rows": rows,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    speedlib.write_json(args.output, document)
    print(f"\n{rm.name}, {len(pairs)} pairs from {source}, precision {rm.engine.config.precision}; load average "
          f"{os.getloadavg()[0]:.1f} at the end\n")
    print(speedlib.markdown_table(rows, [
        ("method", "orders", ""), ("pairs_per_s", "pairs/s", ".2f"), ("speedup_vs_both", "x both", ".2f"),
        ("second_pass_fraction", "second passes", ".1%"), ("saved_fraction", "saved", ".1%"),
        ("agreement_both", "agreement with both", ".1%"), ("max_abs_dp", "max abs dP", ".3f"),
        ("accuracy", "accuracy", ".3f")]))
    if args.output:
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
