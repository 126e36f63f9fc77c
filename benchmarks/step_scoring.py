"""Step-verdict (process reward) scoring speed: tinyrm's scoring engine against the loop it replaced, one run.

Methods, on the same solutions of the shared MR-GSM8K step file, every step judged (``--contexts``: prefix,
one sequence per step; full, windows reading every step), timed on the same encodings:

* ``loop``: how ``process.scoring.verdicts`` scored before it went through the engine (session 15 and
  earlier): the model as loaded (fp32, adapters unmerged), rows of ``--batch-size`` sorted by length,
  padded, logits at the read masks only (``backbone.mask_logits``);
* ``engine-padded`` / ``engine-packed``: ``verdicts`` now, i.e. ``InferenceEngine.read_probs`` with
  ``attention`` forced, precision auto (bf16 where native, near-ties re-read in fp32), at most
  ``--batch-size`` rows under the engine's token budget; a warm-up call first (the engine's private
  bf16 copy is built once per model).

Models: ``embedded`` (MiniLM, its zero-shot process prompt), ``base`` (a random ModernBERT-base shape on
the embedded tokenizer: the layout and cost of the paper's backbone, not its verdicts) or a saved folder (a
process model, e.g. ``benchmarks/process_rewards.py``'s ``runs/process-rewards/prm``; 64 solutions).

    python benchmarks/step_scoring.py                       # both models, prefix and full (~2 min, 2 cores)
    python benchmarks/step_scoring.py --models embedded --solutions embedded=128
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import speedlib  # noqa: E402
import torch  # noqa: E402

from tinyrm import ProcessRewardModel  # noqa: E402
from tinyrm.backbone import mask_logits, unwrap_peft  # noqa: E402
from tinyrm.config import RewardConfig  # noqa: E402
from tinyrm.process.data import load_rows  # noqa: E402
from tinyrm.process.prompt import CONTEXTS, collate  # noqa: E402
from tinyrm.process.scoring import encode_many, spec, verdicts  # noqa: E402

STEP_FILE = speedlib.DATA / "process" / "mrgsm8k-steps.jsonl"
DEFAULT_SOLUTIONS = {"embedded": 64, "base": 12}
METHODS = ("loop", "engine-padded", "engine-packed")


def load_model(name: str, max_length: int) -> ProcessRewardModel:
    if name not in DEFAULT_SOLUTIONS:  # a saved folder: a process / outcome model, or any cloze model zero-shot
        return ProcessRewardModel.from_pretrained(name, device="cpu", max_length=max_length)
    if name == "embedded":
        return ProcessRewardModel.from_pretrained("default", device="cpu", max_length=max_length)
    from transformers import AutoTokenizer

    from tinyrm.backbone import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    mlm = speedlib.random_modernbert("base", tokenizer)
    rm = ProcessRewardModel(mlm, tokenizer, RewardConfig(base_model="random ModernBERT-base shape",
                                                         max_length=max_length), device="cpu")
    rm.name = "base"
    return rm


@torch.inference_mode()
def loop(rm: ProcessRewardModel, encodings: Sequence, batch_size: int) -> list[list[float]]:
    """The former ``verdicts``: fp32 model as loaded, padded rows sorted by length."""
    s, backbone = spec(rm), unwrap_peft(rm.model)
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].input_ids))
    out: list[list[float]] = [[] for _ in encodings]
    for begin in range(0, len(order), batch_size):
        idx = order[begin : begin + batch_size]
        batch = collate([encodings[i] for i in idx], rm.tokenizer.pad_token_id or 0)
        if rm.config.read == "cls":  # one verdict per sequence, read at [CLS]
            batch["mask_positions"] = torch.zeros_like(batch["mask_positions"])
        logits = mask_logits(backbone, batch["input_ids"], batch["attention_mask"], batch["mask_positions"],
                             token_ids=s.answer_ids, token_type_ids=batch.get("token_type_ids"),
                             mask_rows=batch["mask_rows"])
        probs = torch.softmax(logits.float(), dim=-1)[:, 0].tolist()
        for i in idx:
            count = len(encodings[i].mask_positions)
            out[i], probs = probs[:count], probs[count:]
    return out


def method(name: str, batch_size: int) -> Callable:
    if name == "loop":
        return lambda rm, encodings: loop(rm, encodings, batch_size)

    def engine(rm: ProcessRewardModel, encodings: Sequence) -> list[list[float]]:
        rm.engine.config.attention = name.removeprefix("engine-")
        return verdicts(rm, encodings, batch_size=batch_size, calibrated=False)

    return engine


def run(args: argparse.Namespace) -> dict:
    if not STEP_FILE.is_file():
        sys.exit(f"benchmarks/step_scoring.py needs the shared step file {STEP_FILE}")
    solutions = {**dict.fromkeys(args.models, DEFAULT_SOLUTIONS["embedded"]), **DEFAULT_SOLUTIONS}
    for value in args.solutions:  # N (every model) or MODEL=N
        model, _, count = value.rpartition("=")
        solutions.update({model: int(count)} if model else dict.fromkeys(solutions, int(count)))
    rows = load_rows([str(STEP_FILE)]).rows
    results = []
    for model in args.models:
        rm = load_model(model, args.max_length)
        n = solutions[model]
        items = [(r.question, r.steps) for r in rows[:n]]
        for context in args.contexts:
            if context == "full" and rm.config.read == "cls":
                print(f"{model}: reads its verdicts at [CLS], one per sequence: no full context", flush=True)
                continue
            start = time.perf_counter()
            encodings = encode_many(rm, items, context).encodings  # what score_many scores
            encode_s = time.perf_counter() - start
            tokens = sum(len(e.input_ids) for e in encodings)
            reads = sum(len(e.mask_positions) for e in encodings)
            reference = None
            for name in args.methods:
                fn = method(name, args.batch_size)
                fn(rm, encodings[:4])  # warm-up: the engine's private copy, first-call allocations
                rm.engine.rechecked = 0
                timing = speedlib.timed(fn, rm, encodings)
                flat = [p for row in timing.result for p in row]
                reference = reference or flat
                row = {"model": model, "context": context, "method": name, "solutions": n,
                       "sequences": len(encodings), "verdicts": reads, "tokens": tokens,
                       "seconds": round(timing.seconds, 3), "cpu_seconds": round(timing.cpu_seconds, 3),
                       "solutions_per_s": n / timing.seconds, "verdicts_per_s": reads / timing.seconds,
                       "tokens_per_s": tokens / timing.seconds, "peak_mib": round(timing.peak_mib, 1),
                       "rechecked": 0 if name == "loop" else rm.engine.rechecked,
                       "encode_s": round(encode_s, 3),
                       "max_abs_dp": max(abs(a - b) for a, b in zip(flat, reference))}
                results.append(row)
                print(f"{model:8s} {context:6s} {name:14s} {row['solutions_per_s']:8.2f} solutions/s "
                      f"{row['tokens_per_s']:9.0f} tokens/s  max|dP| {row['max_abs_dp']:.1e}", flush=True)
        del rm
        speedlib.free_memory()
    for row in results:  # speed-up against the loop of the same model and context
        base = next((r for r in results if r["method"] == "loop" and r["model"] == row["model"]
                     and r["context"] == row["context"]), None)
        row["x_loop"] = None if base is None else base["seconds"] / row["seconds"]
    return {"machine": speedlib.machine_info(), "config": vars(args), "note": args.note, "rows": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["embedded", "base"], metavar="embedded|base|PATH",
                   help="PATH: a saved model folder (a process model, or any cloze model judging zero-shot)")
    p.add_argument("--contexts", nargs="+", default=list(CONTEXTS), choices=list(CONTEXTS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                   help="the first is the reference of max|dP| (loop: fp32)")
    p.add_argument("--solutions", nargs="*", default=[], help="solutions per model: N or MODEL=N")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per pass at most (every method)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--note", default="", help="stored in the JSON (e.g. \"quiet machine\")")
    p.add_argument("--output", default="runs/bench/step_scoring.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    document = run(args)
    print(speedlib.markdown_table(document["rows"], [
        ("model", "model", ""), ("context", "context", ""), ("method", "method", ""), ("sequences", "sequences", "d"),
        ("tokens", "tokens", "d"), ("solutions_per_s", "solutions/s", ".2f"), ("verdicts_per_s", "verdicts/s", ".1f"),
        ("x_loop", "x loop", ".2f"), ("max_abs_dp", "max abs dP", ".1e"), ("rechecked", "rechecked", "d")]))
    speedlib.write_json(args.output, document)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
