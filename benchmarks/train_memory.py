"""Where ``tinyrm train``'s resident memory goes: RSS after each stage of one training run.

Runs ``tinyrm.train.train`` in a fresh child process (one per configuration) whose sampler thread
reads the process's RSS every 10 ms; each stage (imports, the pairs table, the model, tokenising,
the Trainer, the first and the last optimizer step, saving) is marked by wrapping the function that
does it, so the table shows the RSS when the stage ended and the peak inside it. Prints a markdown
table and writes JSON.

usage (the shared data is read from ../shared/data/train; quiet machine not needed, memory only):
  .venv/bin/python benchmarks/train_memory.py [--data FILE...] [--max-steps 5]
         [--config "batch_size=4,max_length=256" ...] [--output runs/bench/train_memory.json]
Each ``--config`` is one run: comma-separated TrainConfig fields on top of
``model="default", batch_size=4, max_length=256, save_steps=0``.
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_TRAIN = ROOT.parent / "shared" / "data" / "train"

CHILD = r"""
import json, os, sys, threading, time
import psutil

process = psutil.Process()
marks, peak = [], [0]
stage_peak = [0]

def sample():
    while True:
        rss = process.memory_info().rss
        peak[0] = max(peak[0], rss)
        stage_peak[0] = max(stage_peak[0], rss)
        time.sleep(0.01)

threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()

def status_mib():
    # RssAnon: the heap (tensors, Python objects); RssFile: mapped files (libraries, Arrow caches), reclaimable.
    fields = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith("Rss"))
    return {k.strip(): round(int(v.split()[0]) / 1024) for k, v in fields.items()}

def mark(stage):
    rss = process.memory_info().rss
    stage_peak[0] = max(stage_peak[0], rss)
    status = status_mib()
    marks.append({"stage": stage, "seconds": round(time.perf_counter() - start, 1),
                  "rss_mib": round(rss / 2**20), "stage_peak_mib": round(stage_peak[0] / 2**20),
                  "anon_mib": status.get("RssAnon"), "file_mib": status.get("RssFile")})
    stage_peak[0] = rss

mark("python")
import torch, transformers  # noqa: E401
mark("import torch + transformers")
import tinyrm.train
from tinyrm.pairwise import train as cloze
from tinyrm.training import trainer as trainer_module
mark("import tinyrm")

def wrap(module, name, stage):
    original = getattr(module, name)
    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        mark(stage)
        return out
    setattr(module, name, wrapped)

wrap(cloze, "load_training_pairs", "pairs table (Arrow)")
wrap(cloze, "build_model", "model")
wrap(cloze, "ClozeDataset", "tokenise (Dataset.map)")
from transformers import TrainerCallback

class Marks(TrainerCallback):
    def on_train_begin(self, args, state, control, **kw):
        mark("Trainer built")
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 1:
            mark("optimizer step 1")
    def on_train_end(self, args, state, control, **kw):
        mark(f"optimizer step {state.global_step}")

original_fit = trainer_module.fit
def fit(*args, callbacks=None, **kwargs):
    return original_fit(*args, callbacks=[*(callbacks or []), Marks()], **kwargs)
cloze.fit = fit
config = tinyrm.train.TrainConfig(**json.loads(sys.argv[1]))
tinyrm.train.train(config)
mark("saved")
print("MARKS " + json.dumps({"marks": marks, "peak_mib": round(peak[0] / 2**20)}))
"""


def run_child(fields: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(fields)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("MARKS ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len("MARKS "):])


def parse_config(text: str) -> dict:
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=sorted(glob.glob(str(SHARED_TRAIN / "*.jsonl"))))
    parser.add_argument("--max-steps", type=int, default=5)
    parser.add_argument("--config", action="append", default=None, help="TrainConfig fields, a=1,b=2 (repeatable)")
    parser.add_argument("--output", default="runs/bench/train_memory.json")
    args = parser.parse_args(argv)
    if not args.data:
        print("no data (../shared/data/train absent and no --data): nothing to measure")
        return 0
    runs = []
    for text in args.config or [""]:
        with tempfile.TemporaryDirectory() as tmp:
            fields = {"model": "default", "data": args.data, "batch_size": 4, "max_length": 256, "save_steps": 0,
                      "max_steps": args.max_steps, "output": str(Path(tmp) / "model"), **parse_config(text)}
            os.environ["TINYRM_DATASETS_CACHE"] = str(Path(tmp) / "cache")  # cold cache: every run the same
            began = time.perf_counter()
            result = run_child(fields)
            result.update(config=text or "(README flags only)", seconds=round(time.perf_counter() - began, 1))
            runs.append(result)
        print(f"\n### {result['config']}: peak {result['peak_mib']} MiB, {result['seconds']} s\n")
        print("| stage | s | RSS at end MiB | of which anon / file | peak in stage MiB |\n|---|---:|---:|---:|---:|")
        for m in result["marks"]:
            print(f"| {m['stage']} | {m['seconds']} | {m['rss_mib']} | {m['anon_mib']} / {m['file_mib']} |"
                  f" {m['stage_peak_mib']} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "train_memory", "argv": sys.argv[1:], "runs": runs}
    Path(args.output).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
