"""Training data that scales: peak memory and the time to the first optimizer step, cold and warm cache.

Each run is a fresh Python process calling ``tinyrm.train.train(TrainConfig(model="default",
data=[...], max_steps=1, ...))`` with the CPU defaults (or the GPU ones where CUDA is present):

* ``cold``: an empty cache folder (a temporary one): the JSONL files are validated into the Arrow
  pairs table and every pair is tokenised by ``Dataset.map``;
* ``warm``: the same cache folder again: both tables are memory-mapped from disk, nothing is read
  or tokenised.

Measured per run: seconds from launching the process to the end of optimizer step 1 (a patched
``CallbackHandler.on_step_end``), to the Trainer's start (``on_train_begin``: imports, model, data),
and to the process's exit (the model is saved after the step); the peak resident memory of the whole
process (``getrusage(RUSAGE_SELF).ru_maxrss`` read at its end, plus ``RUSAGE_CHILDREN``); the size of
the cache folder. Prints a markdown table and writes JSON.

usage (on a quiet machine; the shared data is read from ../shared/data/train, skipped if absent):
  .venv/bin/python benchmarks/data_pipeline.py [--data FILE...] [--set FIELD=VALUE ...]
                                               [--output runs/bench/data_pipeline.json]
e.g. a quick check on one small file:
  nice -n 19 .venv/bin/python benchmarks/data_pipeline.py --data ../shared/data/train/chat-pandalm.jsonl
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_TRAIN = ROOT.parent / "shared" / "data" / "train"
RUNS = ("cold", "warm")


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def peak_rss_mib() -> float:
    """Peak resident set of this process and its waited-for children, MiB (ru_maxrss: KiB on Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return round((own + children) / 2**20, 1)


def child(spec_path: str) -> None:
    """One measured training run (this is the whole process being measured)."""
    spec = json.loads(Path(spec_path).read_text())
    marks: dict[str, float] = {}
    from transformers.trainer_callback import CallbackHandler

    begin, step_end = CallbackHandler.on_train_begin, CallbackHandler.on_step_end

    def on_train_begin(self, args, state, control):
        marks.setdefault("train_begin", time.time())
        return begin(self, args, state, control)

    def on_step_end(self, args, state, control):
        control = step_end(self, args, state, control)
        if state.global_step >= 1 and "first_step" not in marks:
            marks["first_step"] = time.time()
            control.should_training_stop = True
        return control

    CallbackHandler.on_train_begin, CallbackHandler.on_step_end = on_train_begin, on_step_end
    from dataclasses import asdict

    from tinyrm.train import TrainConfig, train

    result = train(TrainConfig(**spec["config"]))
    marks["end"] = time.time()
    Path(spec["result"]).write_text(json.dumps({"marks": marks, "peak_rss_mib": peak_rss_mib(),
                                                "train": asdict(result)}))


def folder_mib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def measure(name: str, config: dict, work: Path) -> dict:
    spec = work / f"{name}.spec.json"
    out = work / f"{name}.result.json"
    spec.write_text(json.dumps({"config": {**config, "output": str(work / f"model-{name}")}, "result": str(out)}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TINYRM_DATASETS_CACHE": config["cache_dir"]}
    start = time.time()
    done = subprocess.run([sys.executable, __file__, "--child", str(spec)], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{done.stderr[-4000:]}")
    record = json.loads(out.read_text())
    marks = record["marks"]
    return {"run": name, "seconds_to_first_step": round(marks["first_step"] - start, 2),
            "seconds_to_trainer": round(marks["train_begin"] - start, 2),
            "seconds_total": round(marks["end"] - start, 2), "peak_rss_mib": record["peak_rss_mib"],
            "cache_mib": folder_mib(Path(config["cache_dir"])), "steps": record["train"]["steps"],
            "truncated_examples": record["train"]["truncated_examples"]}


def table(rows: list[dict], pairs: int) -> str:
    lines = [f"Data pipeline: {pairs:,} pairs, time from process start, peak RSS of the whole process", "",
             "| run | to first step (s) | to Trainer start (s) | process total (s) | peak RSS (MiB) | cache (MiB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['seconds_to_first_step']:.1f} | {r['seconds_to_trainer']:.1f} | "
                     f"{r['seconds_total']:.1f} | {r['peak_rss_mib']:,.0f} | {r['cache_mib']:,.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=None, metavar="FILE",
                    help=f"JSONL files (default: {SHARED_TRAIN}/*.jsonl)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="any other TrainConfig field, e.g. --set objective=classifier")
    ap.add_argument("--output", default="runs/bench/data_pipeline.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return 0

    files = args.data or sorted(glob.glob(str(SHARED_TRAIN / "*.jsonl")))
    if not files:
        print(f"skipped: no training data ({SHARED_TRAIN} is absent; pass --data FILE...)")
        return 0
    from tinyrm.data import load_pairs

    pairs = len(load_pairs(files).pairs)  # in this (unmeasured) process, only for the table
    overrides = {key: parse_value(value) for key, value in (item.split("=", 1) for item in args.set)}
    with tempfile.TemporaryDirectory(prefix="tinyrm-bench-data-") as tmp:
        work = Path(tmp)
        config = {"model": args.model, "data": [str(Path(f).resolve()) for f in files], "max_steps": 1,
                  "save_steps": 0, "cache_dir": str(work / "cache"), **overrides}
        rows = []
        for name in RUNS:
            rows.append(measure(name, config, work))
            print(f"{name}: {rows[-1]}", file=sys.stderr)
    import datasets
    import torch

    summary = {"files": files, "pairs": pairs, "config": {k: v for k, v in config.items() if k != "cache_dir"},
               "rows": rows, "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                         "cuda": torch.cuda.is_available(), "python": platform.python_version(),
                                         "datasets": datasets.__version__, "platform": platform.platform()}}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2) + "\n")
    print(table(rows, pairs))
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
