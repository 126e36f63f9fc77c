"""Length bias: training methods against the old default (`ends`), on the same pairs and budget, several seeds.

Every run is the README's CPU command (2,000 stratified pairs, 250 steps of 8 pairs both orders, lr 1e-4,
length 256, fp32, the embedded MiniLM) plus the method's options, trained on the *train* part of a
held-out split of the shared training files and scored on

* ``dev``: ../shared/data/dev/hhh.jsonl (221 pairs);
* ``heldout``: the held-out part of every training file (``--heldout-fraction`` of each file's groups,
  at most ``--heldout-per-file`` pairs per file). Rows are split by group, never by row: DebugBench by
  problem (the slug in its id: a problem appears in several languages and bug types), every other file
  by prompt text (Arena-Hard holds 8 pairs per prompt). The subset of a held-out pair is its file.

Each score carries ``length_bias`` (tinyrm.evaluation: accuracy where the chosen response is longer /
shorter, and ``agrees_with_longer``), and per held-out file the share of pairs whose differing content
survives the model's truncation (``tinyrm.truncation.diff_survival``). ``overfit`` trains 256 pairs for
10 epochs and reports the training-set accuracy (can the objective fit real pairs at all?).

    python benchmarks/length_bias.py --methods ends ends+balance diff diff+balance --seeds 42 7 0
    python benchmarks/length_bias.py --methods ends --seeds 42 --max-steps 5 --max-pairs 40   # smoke

Runs on CPU or GPU (fp32 on both, so a GPU run reproduces the CPU command's arithmetic up to kernel
order). The JSON (``--output``/length_bias.json) is rewritten after every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# name -> TrainConfig fields on top of the README's CPU command. Every option is explicit, so a row
# keeps its meaning when a default changes: "ends" is the default before the length-bias work
# (docs/training.md, "Length bias", calls it "old default"), "diff+balance" the cloze default after it.
ENDS, DIFF = {"truncation": "ends"}, {"truncation": "diff"}
METHODS: dict[str, dict] = {
    "ends": {**ENDS, "length_balance": False},
    "ends+balance": {**ENDS, "length_balance": True},
    "diff": {**DIFF, "length_balance": False},
    "diff+balance": {"truncation": "diff", "length_balance": True},
    # Several epochs over fewer pairs: the same 2,000 pair-visits.
    "diff+balance-1000x2": {"truncation": "diff", "length_balance": True, "max_pairs": 1000, "epochs": 2.0},
    "diff+balance-len384": {"truncation": "diff", "length_balance": True, "max_length": 384},
    "diff+balance-lr3e-4": {"truncation": "diff", "length_balance": True, "lr": 3e-4},
    "diff+balance-head10": {"truncation": "diff", "length_balance": True, "head_lr_scale": 10.0},
    # Frozen embeddings + 3 of 6 layers run 1.5x faster on CPU (docs/speed.md): 375 steps in the same time.
    "diff+balance-freeze3": {"truncation": "diff", "length_balance": True, "freeze_layers": 3, "max_steps": 375,
                             "max_pairs": 3000},
    "classifier+balance": {"objective": "classifier", "length_balance": True},
    # Every balanced pair of the train split once (about 6x the README's budget; a lent GPU only).
    "classifier+balance-full": {"objective": "classifier", "length_balance": True, "max_pairs": 0, "max_steps": -1,
                                "epochs": 1.0},
    "classifier+balance-full-len512": {"objective": "classifier", "length_balance": True, "max_pairs": 0,
                                       "max_steps": -1, "epochs": 1.0, "max_length": 512},
    "overfit": {**ENDS, "length_balance": False, "max_pairs": 256, "epochs": 10.0},
}


def group_key(row: dict, file: str) -> str:
    """What must not cross the split: the problem for DebugBench, else the prompt."""
    if "debugbench" in file and row.get("id", "").startswith("debugbench-"):
        body = row["id"].split("-", 2)[2]  # debugbench-<lang>-<slug>-<bug_type>-<n>
        return body.rsplit("-", 2)[0]
    return row["prompt"]


def split_files(files: list[str], fraction: float, per_file: int, seed: int, out: Path) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``heldout.jsonl`` under ``out`` (seeded by group hash, stable across runs)."""
    out.mkdir(parents=True, exist_ok=True)
    train_rows, heldout_rows = [], []
    for file in sorted(files):
        name = Path(file).stem
        rows = [json.loads(line) for line in Path(file).read_text(encoding="utf-8").splitlines() if line.strip()]
        held = []
        for row in rows:
            digest = hashlib.sha256(f"{seed}:{group_key(row, name)}".encode()).digest()
            (held if int.from_bytes(digest[:8], "big") / 2**64 < fraction else train_rows).append(row)
        random.Random(seed).shuffle(held)
        heldout_rows += [{**row, "subset": name} for row in held[:per_file]]
    paths = out / "train.jsonl", out / "heldout.jsonl"
    for path, rows in zip(paths, (train_rows, heldout_rows)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


def base_config(args, train_file: Path, seed: int, name: str):
    from tinyrm.train import TrainConfig

    return TrainConfig(model=args.model, data=[str(train_file)], output=str(Path(args.output) / f"{name}-s{seed}"),
                       max_pairs=args.max_pairs, batch_size=16, micro_batch_size=16, max_length=256, lr=1e-4,
                       max_steps=args.max_steps, save_steps=0, seed=seed, precision="fp32")


def slim(results: dict) -> dict:
    """The figures the table needs (accuracy, n, length_bias) overall and per subset."""
    keep = ("accuracy", "n", "length_bias")
    out = {k: results.get(k) for k in keep}
    out["subsets"] = {name: {k: entry.get(k) for k in keep} for name, entry in results.get("subsets", {}).items()}
    return out


def run_one(args, name: str, seed: int, train_file: Path, dev, heldout) -> dict:
    from tinyrm import load
    from tinyrm.data import load_pairs
    from tinyrm.evaluation.evaluate import evaluate_pairs
    from tinyrm.train import train

    overrides = dict(METHODS[name])
    if name == "overfit":
        overrides["max_steps"] = -1
    config = dataclasses.replace(base_config(args, train_file, seed, name), **overrides)
    start = time.perf_counter()
    result = train(config)
    rm = load(result.output)
    row = {"method": name, "seed": seed, "options": overrides, "train_seconds": result.seconds,
           "steps": result.steps, "pairs": result.pairs, "truncated_examples": result.truncated_examples}
    if name == "overfit":
        from tinyrm.pairwise.data import load_training_pairs

        seen = load_training_pairs(config).pairs
        row["train_fit"] = slim(evaluate_pairs(rm, seen, batch_size=args.batch_size))
    else:
        seen = load_pairs([str(train_file)]).pairs
        sample = random.Random(seed).sample(seen, min(200, len(seen)))
        row["train_sample"] = slim(evaluate_pairs(rm, sample, batch_size=args.batch_size))
        row["dev"] = slim(evaluate_pairs(rm, dev, batch_size=args.batch_size))
        row["heldout"] = slim(evaluate_pairs(rm, heldout, batch_size=args.batch_size))
        row["diff_survival"] = survival(rm, heldout)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def survival(rm, pairs) -> dict:
    """Per held-out file: the share of pairs whose differing content survives this model's truncation."""
    try:
        from tinyrm.truncation import diff_survival
    except ImportError:  # the truncation module is not in this checkout
        return {}
    if not hasattr(getattr(rm, "encoder", None), "truncation"):  # baselines: no cloze encoder
        return {}
    by_file: dict[str, list] = {}
    for pair in pairs:
        by_file.setdefault(pair.subset or "", []).append(pair)
    return {name: diff_survival(rm.encoder, rows) for name, rows in sorted(by_file.items())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", nargs="+", default=sorted(str(f) for f in (SHARED / "train").glob("*.jsonl")))
    p.add_argument("--dev", default=str(SHARED / "dev" / "hhh.jsonl"))
    p.add_argument("--methods", nargs="+", default=["ends", "ends+balance", "diff", "diff+balance"],
                   choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 7, 0])
    p.add_argument("--model", default="default")
    p.add_argument("--max-pairs", type=int, default=2000)
    p.add_argument("--max-steps", type=int, default=250)
    p.add_argument("--heldout-fraction", type=float, default=0.15)
    p.add_argument("--heldout-per-file", type=int, default=150)
    p.add_argument("--split-seed", type=int, default=1234)
    p.add_argument("--batch-size", type=int, default=64, help="scoring batch size")
    p.add_argument("--output", default="runs/length-bias")
    p.add_argument("--json", default=None, help="default <output>/length_bias.json")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from tinyrm.data import load_pairs

    if not args.train or not Path(args.dev).is_file():
        print(f"length_bias: error: the shared data is missing (looked in {SHARED})", file=sys.stderr)
        return 2
    train_file, heldout_file = split_files(args.train, args.heldout_fraction, args.heldout_per_file,
                                           args.split_seed, Path(args.output) / "split")
    dev, heldout = load_pairs([args.dev]).pairs, load_pairs([str(heldout_file)]).pairs
    path = Path(args.json or Path(args.output) / "length_bias.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"benchmark": "length_bias", "argv": sys.argv[1:], "heldout_pairs": len(heldout),
                "dev_pairs": len(dev), "runs": []}
    for seed in args.seeds:
        for name in args.methods:
            try:
                row = run_one(args, name, seed, train_file, dev, heldout)
            except Exception as error:  # keep the other runs
                row = {"method": name, "seed": seed, "error": f"{type(error).__name__}: {error}"}
            document["runs"].append(row)
            path.write_text(json.dumps(document, indent=1) + "\n")
            print(json.dumps({k: row.get(k) for k in ("method", "seed", "seconds", "error")}), flush=True)
            for part in ("dev", "heldout", "train_fit"):
                if part in row:
                    bias = row[part].get("length_bias") or {}
                    print(f"  {part}: acc {row[part]['accuracy']:.3f} agrees_with_longer "
                          f"{bias.get('agrees_with_longer')}", flush=True)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
