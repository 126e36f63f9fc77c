"""CPU training throughput: pairs/s for the cloze and classifier objectives, with and without freezing.

Each row is a real ``tinyrm.train.train`` run (the Trainer path users run: data loading, both orders
per pair for cloze, gradient steps, metrics.jsonl) for ``--warmup-steps + --steps`` optimizer
steps on the same pairs. Steady-state pairs/s comes from the per-step timestamps in
``metrics.jsonl``: pairs in steps W+1..W+N / time from the end of step W to the end of step W+N, so
model loading, the first slow steps and the final save are not in it (``run_pairs_per_s``, the
whole run as ``TrainResult`` reports it, is kept beside it).

Inputs are long enough to fill ``--max-length`` (256): pairs from ``../shared/data/train`` whose
prompt and answers together exceed it (a domain-stratified seeded sample), else the synthetic demo
pairs with filler context. A cloze pair is two sequences (both orders, each holding both answers);
a classifier pair is two sequences too (chosen and rejected, each scored on its own): both
objectives see ``--pairs-per-step`` pairs, i.e. twice as many sequences of <= 256 tokens, per step
(one micro-batch, no accumulation).

    python benchmarks/train_throughput.py                               # cloze/classifier x freeze 0/3
    python benchmarks/train_throughput.py --objectives cloze --freeze 0 3 5 --steps 12
    python benchmarks/train_throughput.py --steps 1 --warmup-steps 1 --pairs-per-step 2  # smoke run
    python benchmarks/train_throughput.py --objectives cloze --freeze 0 --attention padded packed \
        --lengths natural --max-length 512   # packed vs padded on the train pairs as they are
    python benchmarks/train_throughput.py --random-shape base ...  # a random ModernBERT of that shape instead
    python benchmarks/train_throughput.py ... --freeze 11 --dora-rank 64 --dora-forward peft fused  # DoRA's forward
    python benchmarks/train_throughput.py --objectives process --attention padded packed  # step verdicts

``process`` rows train the process objective (prefix context, balanced class weights) on the shared
MR-GSM8K step file as it is: one example is one judged step, so its "pairs" are examples (``--pairs-per-step``
examples per step), at their natural lengths whatever ``--lengths`` says.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import speedlib  # noqa: E402
import torch  # noqa: E402

from tinyrm.backbone import DORA_FORWARDS  # noqa: E402

STEP_FILE = speedlib.DATA / "process" / "mrgsm8k-steps.jsonl"


def long_pairs(tokenizer, n: int, max_length: int, seed: int = 0) -> tuple[list, str]:
    """``n`` PreferencePairs whose texts exceed ``max_length`` tokens (every example fills it)."""
    from tinyrm.data import PreferencePair, load_pairs, stratified_sample

    files = sorted((speedlib.DATA / "train").glob("*.jsonl"))
    if files:
        pool = load_pairs([str(f) for f in files], skip_bad_rows=True).pairs
        random.Random(seed).shuffle(pool)
        pool = pool[: 20 * n]

        def size(p) -> int:
            texts = (p.prompt, p.chosen, p.rejected)
            return sum(len(tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]) for t in texts)

        long = [p for p in pool if size(p) > max_length + 32]
        if len(long) >= n:
            return stratified_sample(long, n, seed), f"{speedlib.DATA / 'train'} (pairs over {max_length} tokens)"
    from tinyrm.tools.synthetic import generate

    filler = " ".join(["the answer should be checked carefully against the question"] * (max_length // 8))
    pairs = [PreferencePair(prompt=filler + " " + p.prompt, chosen=p.chosen + " " + filler[:400],
                            rejected=p.rejected + " " + filler[:400], domain=p.domain)
             for p in generate(n, seed=seed)]
    return pairs, "synthetic demo pairs with filler context"


def natural_pairs(n: int, seed: int = 0) -> tuple[list, str]:
    """``n`` PreferencePairs from ``../shared/data/train`` as they are (mixed lengths: what packing is for), a
    domain-stratified seeded sample; else the synthetic demo pairs."""
    from tinyrm.data import load_pairs, stratified_sample

    files = sorted((speedlib.DATA / "train").glob("*.jsonl"))
    if files:
        pool = load_pairs([str(f) for f in files], skip_bad_rows=True).pairs
        return stratified_sample(pool, n, seed), f"{speedlib.DATA / 'train'} (as they are)"
    from tinyrm.tools.synthetic import generate

    return generate(n, seed=seed), "synthetic demo pairs"


def steady_rate(metrics: Path, warmup: int, pairs_per_step: float) -> tuple[float | None, float | None]:
    """(pairs/s, seconds per step) over the steps after ``warmup``, from metrics.jsonl timestamps."""
    times: dict[int, float] = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record and "time" in record:
            times[int(record["step"])] = float(record["time"])
    if not times:
        return None, None
    last = max(times)
    start = warmup if warmup in times else None
    if start is None or last <= start:
        return None, None
    per_step = (times[last] - times[start]) / (last - start)
    return pairs_per_step / per_step, per_step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--random-shape", choices=list(speedlib.SHAPES), default=None,
                   help="train a randomly initialised ModernBERT of this shape (--model's tokenizer) instead")
    p.add_argument("--objectives", nargs="+", default=["cloze", "classifier"],
                   choices=["cloze", "classifier", "process"],
                   help="process: one example per judged step of the shared MR-GSM8K file (its rows count examples)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0, 3], help="layers frozen (embeddings + lowest K)")
    p.add_argument("--dora-rank", type=int, default=0, help="also DoRA adapters of this rank on every row (0 = off)")
    p.add_argument("--dora-forward", nargs="+", default=["fused"], choices=DORA_FORWARDS,
                   help="DoRA layers' forward (TrainConfig.dora_forward); both: a row each, 'x peft' compares them")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--pairs-per-step", type=int, default=8,
                   help="pairs per optimizer step, one micro-batch (cloze: 2 examples per pair, classifier: 1)")
    p.add_argument("--warmup-steps", type=int, default=2, help="steps run but not timed")
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--attention", nargs="+", default=["padded"], choices=["padded", "packed"],
                   help="TrainConfig.attention per row (packed: one token stream per micro-batch)")
    p.add_argument("--lengths", default="fill", choices=["fill", "natural"],
                   help="fill: pairs over --max-length (every example fills it); natural: train pairs as they are")
    p.add_argument("--group-by-length", action="store_true", help="the Trainer's length grouping (default off)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--note", default="")
    p.add_argument("--output", default="runs/bench/train_throughput.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tinyrm.backbone import load_mlm
    from tinyrm.tools.synthetic import write_jsonl
    from tinyrm.train import TrainConfig, train

    tokenizer, _ = load_mlm(args.model)
    total_steps = args.warmup_steps + args.steps
    n = total_steps * args.pairs_per_step
    pairs, source = (long_pairs(tokenizer, n, args.max_length) if args.lengths == "fill" else natural_pairs(n))
    if "process" in args.objectives:
        source += f"; process rows: {STEP_FILE} as it is"
    info = speedlib.machine_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tinyrm-train-bench-") as tmp:
        data = write_jsonl(pairs, Path(tmp) / "train.jsonl")
        model = args.model
        if args.random_shape:  # ModernBERT's local/global layers and unpadding, which the embedded MiniLM lacks
            model = str(Path(tmp) / f"random-{args.random_shape}")
            speedlib.random_modernbert(args.random_shape, tokenizer, max_positions=max(8192, args.max_length)
                                       ).save_pretrained(model)
            tokenizer.save_pretrained(model)
        forwards = args.dora_forward if args.dora_rank else ["fused"]  # no adapters: the forward is moot
        for objective, freeze, attention, forward in ((o, f, a, d) for o in args.objectives for f in args.freeze
                                                      for a in args.attention for d in forwards):
            out = Path(tmp) / f"{objective}-freeze{freeze}-{attention}-{forward}"
            micro = args.pairs_per_step * (2 if objective == "cloze" else 1)  # examples per step
            config = TrainConfig(
                model=model, data=[str(STEP_FILE if objective == "process" else data)], output=str(out),
                objective=objective,
                max_length=args.max_length, micro_batch_size=micro, batch_size=micro, max_steps=total_steps,
                save_steps=0, lr=1e-4, warmup_ratio=0.0, freeze_layers=freeze, dora_rank=args.dora_rank,
                precision=args.precision, attention=attention, dora_forward=forward,
                group_by_length=args.group_by_length,
                length_balance=False)  # a throughput run: every pair, whichever response is longer
            result = train(config)
            pairs_per_step = result.pairs / max(result.steps, 1)
            rate, per_step = steady_rate(out / "metrics.jsonl", args.warmup_steps, pairs_per_step)
            row = {"objective": objective, "freeze_layers": freeze, "attention": attention,
                   "dora_rank": args.dora_rank, "dora_forward": forward if args.dora_rank else None,
                   "pairs_per_s": rate, "seconds_per_step": per_step, "pairs_per_step": pairs_per_step,
                   "run_pairs_per_s": result.pairs_per_second, "run_seconds": result.seconds,
                   "steps": result.steps, "trainable_parameters": result.trainable_parameters,
                   "total_parameters": result.total_parameters, "truncated_examples": result.truncated_examples}
            rows.append(row)
            shown = f"{rate:.2f}" if rate else "n/a"
            label = f" DoRA {forward}" if args.dora_rank else ""
            print(f"  {objective} freeze {freeze} {attention}{label}: {shown} pairs/s steady, "
                  f"{result.pairs_per_second:.2f} over the run", file=sys.stderr)
    base = {(r["objective"], r["attention"], r["dora_forward"]): r["pairs_per_s"] for r in rows
            if r["freeze_layers"] == min(args.freeze)}
    padded = {(r["objective"], r["freeze_layers"], r["dora_forward"]): r["pairs_per_s"] for r in rows
              if r["attention"] == "padded"}
    peft = {(r["objective"], r["freeze_layers"], r["attention"]): r["pairs_per_s"] for r in rows
            if r["dora_forward"] == "peft"}
    for row in rows:
        rate = row["pairs_per_s"]
        ref = base.get((row["objective"], row["attention"], row["dora_forward"]))
        row["speedup_vs_unfrozen"] = rate / ref if ref and rate else None
        ref = padded.get((row["objective"], row["freeze_layers"], row["dora_forward"]))
        row["packed_vs_padded"] = rate / ref if row["attention"] == "packed" and ref and rate else None
        ref = peft.get((row["objective"], row["freeze_layers"], row["attention"]))
        row["fused_vs_peft"] = rate / ref if row["dora_forward"] == "fused" and ref and rate else None
    model_name = f"random ModernBERT {args.random_shape} shape" if args.random_shape else args.model
    document = {"benchmark": "train_throughput", "model": model_name, "data": source, "machine": info,
                "note": args.note, "config": vars(args), "rows": rows, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    speedlib.write_json(args.output, document)
    print(f"\n{model_name}, length {args.max_length}, {args.pairs_per_step} pairs per step, "
          f"{args.steps} timed steps after {args.warmup_steps}; {source}; load average {os.getloadavg()[0]:.1f} at "
          f"the end\n")
    print(speedlib.markdown_table(rows, [
        ("objective", "objective", ""), ("freeze_layers", "frozen layers", "d"), ("attention", "attention", ""),
        ("dora_forward", "DoRA forward", ""),
        ("pairs_per_s", "pairs/s (steady)", ".2f"), ("speedup_vs_unfrozen", f"x freeze {min(args.freeze)}", ".2f"),
        ("packed_vs_padded", "x padded", ".2f"), ("fused_vs_peft", "x peft", ".2f"),
        ("seconds_per_step", "s/step", ".2f"), ("pairs_per_step", "pairs/step", ".0f"),
        ("run_pairs_per_s", "pairs/s (whole run)", ".2f"), ("trainable_parameters", "trainable params", ",d")]))
    if args.output:
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
