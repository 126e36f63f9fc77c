"""Best-of-n ranking benchmark: top-1 accuracy and forward passes of knockout vs round robin.

Candidate sets come from held-out prompts of ``../shared/data/train`` (a stable hash split by prompt):
the base pair's chosen answer (the target), its rejected answer, other answers rejected for the same
prompt and never chosen for it (where the source has them), then answers written for other prompts
of the same file. Sets are nested (the n = 4 set is the n = 8 set's first four, and so on) and
candidate positions are shuffled, so the bracket gives the target no advantage.

By default it first trains the embedded all-MiniLM-L6-v2 briefly on the other prompts (the table says
so); ``--model DIR`` ranks with a model you trained instead (keep the same --holdout and --seed so its
training prompts stay out of the sets). Bounded: ``--sets`` per n and ``--time-limit``.

    .venv/bin/python benchmarks/ranking.py                        # ~5 min on 2 CPU cores
    .venv/bin/python benchmarks/ranking.py --model runs/rank-bench-model --sets 48
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@dataclass
class RankingBenchConfig:
    model: str | None = None  # trained model dir; None = train the embedded model briefly first
    data: list[str] = field(default_factory=lambda: sorted(str(p) for p in (SHARED / "train").glob("*.jsonl")))
    sizes: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    sets: int = 12  # base pairs (each yields one nested set per n)
    holdout: float = 0.2  # fraction of prompts kept out of training
    max_length: int = 128
    batch_size: int = 64
    train_steps: int = 30
    train_batch: int = 16
    lr: float = 1e-4
    save_model: str = "runs/rank-bench-model"
    seed: int = 0
    time_limit_s: float = 900.0
    baseline: str | None = None  # "length": rank with the longer-answer-wins heuristic instead of a model
    threads: int | None = 1  # torch intra-op threads; 1 avoids OpenMP thrashing on a shared CPU
    output: str | None = None


@dataclass
class CandidateSet:
    prompt: str
    candidates: list[str]  # for the largest n; smaller n use a prefix (target included)
    source: str
    same_prompt: int  # distractors written for this prompt (incl. the pair's rejected)

    def for_n(self, n: int, seed: int) -> tuple[list[str], int]:
        chosen = self.candidates[:n]
        order = list(range(n))
        random.Random(f"{seed}-{n}-{self.prompt[:64]}").shuffle(order)
        return [chosen[i] for i in order], order.index(0)


def held_out(prompt: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha1(f"{seed}:{prompt}".encode()).hexdigest()
    return int(digest[:8], 16) / 0xFFFFFFFF < fraction


def build_sets(config: RankingBenchConfig) -> tuple[list[CandidateSet], list[dict]]:
    """Held-out candidate sets (round robin over files) and the training rows from the other prompts."""
    from tinyrm.data import read_jsonl

    rng = random.Random(config.seed)
    n_max = max(config.sizes)
    per_file: list[list[CandidateSet]] = []
    train_rows: list[dict] = []
    for path in config.data:
        pairs = read_jsonl(path).pairs
        test = [p for p in pairs if held_out(p.prompt, config.holdout, config.seed)]
        train_rows += [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                       for p in pairs if not held_out(p.prompt, config.holdout, config.seed)]
        chosen_for: dict[str, set[str]] = defaultdict(set)
        rejected_for: dict[str, set[str]] = defaultdict(set)
        for p in test:
            chosen_for[p.prompt].add(p.chosen)
            rejected_for[p.prompt].add(p.rejected)
        others = sorted({(p.prompt, r) for p in test for r in (p.chosen, p.rejected)})
        sets = []
        for p in rng.sample(test, min(len(test), config.sets)):
            cands = [p.chosen, p.rejected]
            # Answers that lost every comparison they were in for this prompt are worse than a chosen one.
            same = sorted(rejected_for[p.prompt] - chosen_for[p.prompt] - set(cands))
            rng.shuffle(same)
            cands += same[: n_max - 2]
            same_prompt = len(cands) - 1
            for _ in range(100 * n_max):  # bounded: a tiny file may not have enough distinct answers
                if len(cands) >= n_max:
                    break
                prompt, answer = others[rng.randrange(len(others))]
                if prompt != p.prompt and answer not in cands:
                    cands.append(answer)
            if len(cands) == n_max:
                sets.append(CandidateSet(p.prompt, cands, Path(path).stem, same_prompt))
        per_file.append(sets)
    interleaved = [s for group in zip(*per_file) for s in group] if per_file else []
    rest = [s for group in per_file for s in group if s not in interleaved]
    return (interleaved + rest)[: config.sets], train_rows


class CachedScorer:
    """Reuses judgements across methods and nested sets; counts what actually ran."""

    def __init__(self, rm, batch_size: int) -> None:
        self.rm = rm
        self.batch_size = batch_size
        self.cache: dict[tuple[str, str, str], float] = {}
        self.sequences = 0

    def compare_batch(self, items, batch_size: int = 32, both_orders: bool | None = True) -> list[float]:
        items = list(items)
        missing = list({it for it in items if it not in self.cache and (it[0], it[2], it[1]) not in self.cache})
        if missing:
            probs = self.rm.compare_batch(missing, batch_size=self.batch_size, both_orders=True)
            self.sequences += 2 * len(missing)
            self.cache.update(zip(missing, probs))
        # Both-order averaging makes P(b > a) = 1 - P(a > b) exactly, so one entry serves both.
        return [self.cache[it] if it in self.cache else 1.0 - self.cache[(it[0], it[2], it[1])] for it in items]


def train_briefly(config: RankingBenchConfig, rows: list[dict]) -> str:
    from tinyrm.train import TrainConfig, train

    out = ROOT / config.save_model
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    rows = rng.sample(rows, min(len(rows), config.train_steps * config.train_batch))
    data = out / "train-split.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = train(TrainConfig(model="default", data=[str(data)], output=str(out), max_steps=config.train_steps,
                               batch_size=config.train_batch, micro_batch_size=config.train_batch,
                               max_length=config.max_length, lr=config.lr, save_steps=0, seed=config.seed))
    print(f"trained {result.steps} steps on {result.pairs} pairs in {result.seconds:.0f}s -> {out}", file=sys.stderr)
    return str(out)


def run(config: RankingBenchConfig) -> dict:
    import torch
    from tqdm.auto import tqdm

    from tinyrm import load
    from tinyrm.pairwise.rank import knockout, round_robin

    if config.threads:
        torch.set_num_threads(config.threads)

    sets, train_rows = build_sets(config)
    if not sets:
        raise SystemExit(f"no candidate sets: is {SHARED} there?")
    if config.baseline:  # a heuristic judge instead of a model: a reference for the ranking layer alone
        from tinyrm.evaluation.heuristics import HeuristicScorer

        trained_here, model = False, f"baseline:{config.baseline} (heuristic judge, no model)"
        judge = HeuristicScorer(config.baseline, seed=config.seed)
    else:
        trained_here = config.model is None
        model = train_briefly(config, train_rows) if trained_here else config.model
        judge = load(model, max_length=config.max_length)
    scorer = CachedScorer(judge, config.batch_size)
    stats = {n: defaultdict(float) for n in config.sizes}
    started = time.perf_counter()
    done = 0
    for cs in tqdm(sets, desc="candidate sets", unit="set"):
        if time.perf_counter() - started > config.time_limit_s:
            print(f"time limit reached after {done} sets", file=sys.stderr)
            break
        for n in sorted(config.sizes, reverse=True):  # largest first: smaller sets then hit the cache
            candidates, target = cs.for_n(n, config.seed)
            s = stats[n]
            for name, fn in (("round_robin", round_robin), ("knockout", knockout)):
                result = fn(scorer, cs.prompt, candidates, batch_size=config.batch_size)
                s[f"{name}_correct"] += result.ranking[0] == target
                s[f"{name}_sequences"] += result.sequences
                s[f"{name}_calls"] += result.calls
            s["same_prompt"] += min(cs.same_prompt, n - 1)
        done += 1
    rows = []
    for n in config.sizes:
        s = stats[n]
        rows.append({
            "n": n, "sets": done, "random": 1.0 / n,
            **{f"{m}_top1": s[f"{m}_correct"] / done for m in ("knockout", "round_robin")},
            **{f"{m}_sequences": s[f"{m}_sequences"] / done for m in ("knockout", "round_robin")},
            **{f"{m}_calls": s[f"{m}_calls"] / done for m in ("knockout", "round_robin")},
            "same_prompt_distractors": s["same_prompt"] / done,
        })
    seconds = time.perf_counter() - started
    return {"model": model, "trained_here": trained_here, "config": asdict(config), "rows": rows,
            "sources": sorted({cs.source for cs in sets[:done]}), "sequences_run": scorer.sequences,
            "seconds": seconds}


def print_table(report: dict) -> None:
    how = "embedded all-MiniLM-L6-v2 trained briefly here" if report["trained_here"] else report["model"]
    print(f"\nbest-of-n top-1 accuracy, {how}; held-out prompts\n")
    print("| n | sets | random | knockout top-1 | round-robin top-1 | knockout seqs | round-robin seqs "
          "| knockout calls | round-robin calls | same-prompt distractors |")
    print("|" + "---:|" * 10)
    for r in report["rows"]:
        print(f"| {r['n']} | {r['sets']} | {r['random']:.3f} | {r['knockout_top1']:.3f} | {r['round_robin_top1']:.3f} "
              f"| {r['knockout_sequences']:.0f} | {r['round_robin_sequences']:.0f} | {r['knockout_calls']:.0f} "
              f"| {r['round_robin_calls']:.0f} | {r['same_prompt_distractors']:.1f} |")
    print(f"\nseqs = cloze sequences through the encoder per set (2 per comparison: both orders); calls = batched "
          f"compare_batch passes per set. Sources: {', '.join(report['sources'])}. {report['sequences_run']} "
          f"sequences actually run (judgements shared between methods and nested sets) in {report['seconds']:.0f}s.")


def main(argv: list[str] | None = None) -> int:
    d = RankingBenchConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="trained model dir (default: train the embedded model briefly)")
    p.add_argument("--data", nargs="+", default=d.data)
    p.add_argument("--sizes", nargs="+", type=int, default=d.sizes)
    p.add_argument("--sets", type=int, default=d.sets)
    p.add_argument("--holdout", type=float, default=d.holdout)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--train-steps", type=int, default=d.train_steps)
    p.add_argument("--train-batch", type=int, default=d.train_batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--save-model", default=d.save_model)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--time-limit", type=float, default=d.time_limit_s, dest="time_limit_s")
    p.add_argument("--baseline", default=None, choices=["length"],
                   help="judge with the longer-answer-wins heuristic instead of a model (reference)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0 = torch default)")
    p.add_argument("--output", default=None, help="write the report as JSON")
    config = RankingBenchConfig(**vars(p.parse_args(argv)))
    if min(config.sizes) < 2:
        p.error("--sizes must be >= 2")
    report = run(config)
    print_table(report)
    if config.output:
        Path(config.output).parent.mkdir(parents=True, exist_ok=True)
        Path(config.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
