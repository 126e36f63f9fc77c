"""The RL reward function's cost per group: ``PairwiseReward`` against ``compare_batch`` on the same pairs.

A GRPO batch is ``--groups`` prompts with n completions each. For each n and method (round robin,
knockout) the script times, in the same run and alternating:

* ``reward``: ``PairwiseReward(rm, method)(prompts, completions)``: grouping, the scoring calls, the
  Bradley-Terry fit or bracket, win rates;
* ``direct``: ``rm.compare_batch`` on exactly the pairs (and in the same calls) that ``reward`` scored,
  recorded from a warm-up call: the model's work alone.

overhead = reward / direct - 1 (medians of ``--repeats``; CPU time of this process as well as wall
time, since CPU time is steadier on a shared machine). Target: at most 10%. Completions come from
the offline synthetic preference set (``tinyrm.tools.synthetic``), distinct within each group; the
token cache is cleared before every timed call, so tokenisation is part of both.

    python benchmarks/reward_function.py                                  # embedded MiniLM, n = 2..16
    python benchmarks/reward_function.py --tiny --groups 2 --sizes 2 4 --repeats 1   # smoke run, seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import speedlib  # noqa: E402
import torch  # noqa: E402

from tinyrm.integrations.trl import PairwiseReward  # noqa: E402
from tinyrm.tools.synthetic import generate  # noqa: E402

COLUMNS = [("n", "n", ""), ("method", "method", ""), ("groups", "groups", ""),
           ("pairs_per_group", "pairs / group", ".1f"), ("sequences_per_group", "sequences / group", ".1f"),
           ("calls", "calls", ""), ("reward_s", "reward s", ".3f"), ("direct_s", "direct s", ".3f"),
           ("overhead_wall", "overhead (wall)", "+.1%"), ("overhead_cpu", "overhead (CPU)", "+.1%"),
           ("groups_per_s", "groups/s", ".2f"), ("completions_per_s", "completions/s", ".1f")]


class Recording:
    """Forwards ``compare_batch`` and keeps each call's items (the pairs ``direct`` replays)."""

    def __init__(self, rm) -> None:
        self.rm, self.calls = rm, []

    def compare_batch(self, items, batch_size=32, both_orders=None):
        self.calls.append(list(items))
        return self.rm.compare_batch(self.calls[-1], batch_size=batch_size, both_orders=both_orders)


def batch(groups: int, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """GRPO's layout: each prompt n times in a row, with n distinct completions (answers of other pairs too)."""
    pairs = generate(groups * (n + 1), seed)
    prompts, completions = [], []
    for g in range(groups):
        answers = list(dict.fromkeys(a for p in [pairs[g], *pairs[groups + g * n:]] for a in (p.chosen, p.rejected)))
        assert len(answers) >= n, "not enough distinct answers"
        prompts += [pairs[g].prompt] * n
        completions += answers[:n]
    return prompts, completions


def clock(fn) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def load_model(args):
    from tinyrm import load

    if not args.tiny:
        return load(args.model)
    sys.path.insert(0, str(speedlib.ROOT))
    from tests.integration_helpers import save_opinionated_bert

    return load(save_opinionated_bert(Path(tempfile.mkdtemp(prefix="reward-bench-"))))


def measure(rm, n: int, method: str, args) -> dict:
    prompts, completions = batch(args.groups, n, args.seed)
    recording = Recording(rm)
    reward = PairwiseReward(recording, method=method, batch_size=args.batch_size)
    reward(prompts, completions)  # warm-up, and the calls to replay
    calls = recording.calls
    recording.calls = []
    plain = PairwiseReward(rm, method=method, batch_size=args.batch_size)
    cache = getattr(getattr(rm, "encoder", None), "_cache", None)

    def run_reward():
        plain(prompts, completions)

    def run_direct():
        for items in calls:
            rm.compare_batch(items, batch_size=args.batch_size, both_orders=True)

    times: dict[str, list[tuple[float, float]]] = {"reward": [], "direct": []}
    for r in range(args.repeats):
        for name in (("reward", "direct") if r % 2 else ("direct", "reward")):
            if cache is not None:
                cache.clear()
            times[name].append(clock(run_reward if name == "reward" else run_direct))
    wall = {k: statistics.median(t for t, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    pairs = sum(len(items) for items in calls)
    return {"n": n, "method": method, "groups": args.groups, "pairs_per_group": pairs / args.groups,
            "sequences_per_group": 2 * pairs / args.groups, "calls": len(calls),
            "reward_s": wall["reward"], "direct_s": wall["direct"],
            "reward_cpu_s": cpu["reward"], "direct_cpu_s": cpu["direct"],
            "overhead_wall": wall["reward"] / wall["direct"] - 1, "overhead_cpu": cpu["reward"] / cpu["direct"] - 1,
            "groups_per_s": args.groups / wall["reward"], "completions_per_s": args.groups * n / wall["reward"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="a tinyrm model folder (default: the embedded MiniLM)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer random BERT instead (smoke runs)")
    p.add_argument("--sizes", nargs="+", type=int, default=[2, 4, 8, 16], help="completions per prompt")
    p.add_argument("--methods", nargs="+", default=["round_robin", "knockout"], choices=["round_robin", "knockout"])
    p.add_argument("--groups", type=int, default=8, help="prompts per batch")
    p.add_argument("--repeats", type=int, default=5, help="timed calls of each side (median)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits a shared CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="runs/bench/reward_function.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rm = load_model(args)
    rows = []
    for n in args.sizes:
        for method in args.methods:
            rows.append(measure(rm, n, method, args))
            print(f"n={n:>2} {method:<11} reward {rows[-1]['reward_s']:.3f}s direct {rows[-1]['direct_s']:.3f}s "
                  f"overhead {rows[-1]['overhead_wall']:+.1%} (CPU {rows[-1]['overhead_cpu']:+.1%})", flush=True)
    table = speedlib.markdown_table(rows, COLUMNS)
    print(f"\nmodel: {'tiny random BERT' if args.tiny else args.model}; {args.groups} prompts per batch; "
          f"median of {args.repeats}\n\n{table}")
    speedlib.write_json(args.output, {"config": vars(args), "machine": speedlib.machine_info(), "rows": rows,
                                      "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
