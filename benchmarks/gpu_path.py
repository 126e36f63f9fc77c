"""The GPU path in one short run (for a lent H200): scoring pairs/s and MFU, and DoRA training pairs/s.

Sections, each under the time budget (``--budget-s``, default 420 s: the script always finishes and
writes what it has; the JSON is rewritten after every measurement):

1. the machine's bf16 and fp32 ``torch.matmul`` peak (8192^3; fp32 without TF32, torch's default);
2. scoring, for random ModernBERT-base- and -large-shaped MLMs (base: hidden 768, 22 layers, 12
   heads, intermediate 1152; large: 1024, 28, 16, 2624; vocab 50368) at 128 / 512 / 2,048 tokens
   (encoded lengths uniform in [1 - spread, 1] x L): ``tinyrm`` = ``RewardModel.compare_batch``
   (bf16 copy, length-sorted token-budget batches, logits at the mask; unpadded flash attention
   when ``flash-attn`` is installed, else SDPA on the length-sorted batches: the JSON says which)
   against ``hf-padded`` = a plain loop (bf16 weights, SDPA, input order, fixed batch, full
   ``model(**batch).logits``, read at the mask). Both orders of every pair. pairs/s, tokens/s,
   useful GFLOP/s (speedlib.forward_flops: real tokens, ModernBERT's local windows, head at the
   mask), MFU against the bf16 peak, peak GPU memory;
3. training: ``tinyrm.train.train`` on the large shape with DoRA (rank 128) and the lowest 12
   layers frozen, bf16 autocast, ``--train-length`` tokens: steady pairs/s from the per-step
   timestamps after the warm-up steps, and an approximate MFU (forward of every layer plus 2x
   the forward of the layers above the frozen ones, for the backward pass).

No data files, no hub, no tokenizer download: inputs are random words of a synthetic one-token-per-
word vocabulary (speedlib.synthetic_tokenizer), which is all a throughput figure needs. Needs torch,
transformers, tokenizers, peft and accelerate; tinyrm comes from this repository (``src/``).

    python benchmarks/gpu_path.py                      # on the GPU (JSON to $OUT/gpu_path.json when $OUT is set)
    python benchmarks/gpu_path.py --smoke              # CPU check of the whole script with tiny sizes (~1 min)
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("tinyrm") is None:  # the repository copy on the device, not installed
    sys.path.insert(0, str(ROOT / "src"))

import speedlib  # noqa: E402
import torch  # noqa: E402

DEFAULT_PAIRS = {128: 2048, 512: 512, 2048: 128}


class Run:
    """Time budget and incremental JSON output."""

    def __init__(self, budget_s: float, output: str | None) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.output = output
        self.document: dict = {"benchmark": "gpu_path", "scoring": [], "training": [], "skipped": [], "errors": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.document["elapsed_s"] = time.monotonic() - self.start
        speedlib.write_json(self.output, self.document)

    def skip(self, what: str, reason: str) -> None:
        self.document["skipped"].append({"what": what, "reason": reason})
        print(f"  skipped {what}: {reason}", file=sys.stderr)
        self.save()

    def error(self, what: str, error: BaseException) -> None:
        self.document["errors"].append({"what": what, "error": f"{type(error).__name__}: {error}",
                                        "traceback": traceback.format_exc(limit=6)})
        print(f"  {what} failed: {type(error).__name__}: {error}", file=sys.stderr)
        self.save()


# ----------------------------------------------------------------------------- scoring
def hf_padded(model, rm, pairs, batch_size: int) -> list[float]:
    """The plain loop: both orders, input order, padded batches, full logits, read at the mask."""
    from tinyrm.pairwise.data import pad_batch

    encodings = [rm.encode(p, a, b) for p, a, b in pairs] + [rm.encode(p, b, a) for p, a, b in pairs]
    answer = torch.tensor(rm.answer_ids, device=rm.device)
    pad_id = rm.tokenizer.pad_token_id or 0
    probs: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(encodings), batch_size):
            batch = {k: v.to(rm.device) for k, v in pad_batch(encodings[start : start + batch_size], pad_id).items()}
            positions = batch.pop("mask_positions")
            batch.pop("token_type_ids", None)
            logits = model(**batch).logits
            rows = torch.arange(len(positions), device=rm.device)
            probs += torch.softmax(logits[rows, positions][:, answer].float(), dim=-1)[:, 0].tolist()
            del logits
    n = len(pairs)
    return [(probs[i] + 1 - probs[n + i]) / 2 for i in range(n)]


def tinyrm_scoring(rm, pairs, batch_size: int | None) -> list[float]:
    rm.encoder._cache.clear()  # tokenisation is part of the work
    return rm.compare_batch(pairs, batch_size=batch_size)


def scoring_section(run: Run, args, peak: dict, tokenizer) -> None:
    from tinyrm.config import RewardConfig
    from tinyrm.pairwise.model import RewardModel

    for shape in args.shapes:
        if run.left() < args.reserve_s:
            run.skip(f"scoring {shape}", "time budget")
            continue
        try:
            dev = speedlib.device()
            with torch.device(dev):
                mlm = speedlib.random_modernbert(shape, tokenizer, max_positions=max(8192, max(args.lengths)))
            rm = RewardModel(mlm, tokenizer, RewardConfig(max_length=max(args.lengths), base_model=f"{shape} shape"),
                             device=str(dev))
            rm.engine.config.precision = "bf16"
            rm.engine.config.recheck_margin = 0.0  # random weights: every pair is a near-tie
            rm.engine.config.max_batch_tokens = args.max_batch_tokens
            hf_model = copy.deepcopy(mlm).to(torch.bfloat16).eval()
            try:
                hf_model.set_attn_implementation("sdpa")
            except (AttributeError, ImportError, ValueError):
                pass
            prepared = rm.engine.prepared()
            attention = getattr(prepared.model.config, "_attn_implementation", "?")
            run.document.setdefault("attention", {})[shape] = {
                "tinyrm": attention, "hf-padded": getattr(hf_model.config, "_attn_implementation", "?"),
                "flash_attn_installed": importlib.util.find_spec("flash_attn") is not None}
        except Exception as error:  # noqa: BLE001 - record and go on with the next section
            run.error(f"building {shape}", error)
            continue
        for length in args.lengths:
            n = args.pairs.get(length, DEFAULT_PAIRS.get(length, 256))
            pairs = speedlib.synthetic_pairs(n, length, spread=args.spread, seed=length)
            lengths = [len(rm.encode(p, x, y).input_ids) for p, a, b in pairs for x, y in ((a, b), (b, a))]
            flops = speedlib.forward_flops(mlm, lengths)
            for method in args.methods:
                what = f"scoring {shape} L={length} {method}"
                if run.left() < args.reserve_s:
                    run.skip(what, "time budget")
                    continue
                try:
                    if method == "tinyrm":
                        fn, timed_args, warm_args = tinyrm_scoring, (rm, pairs, None), (rm, pairs[:4], None)
                    else:
                        fn = hf_padded
                        timed_args, warm_args = (hf_model, rm, pairs, args.hf_batch), (hf_model, rm, pairs[:4], 4)
                    fn(*warm_args)  # warm-up: the bf16 copy, kernel selection
                    t = speedlib.timed(fn, *timed_args)
                    seconds, mib = t.seconds, t.peak_mib
                except Exception as error:  # noqa: BLE001 - e.g. out of memory: record, go on
                    run.error(what, error)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                row = {"shape": shape, "length": length, "method": method, "pairs": n,
                       "tokens_per_sequence": sum(lengths) / len(lengths), "seconds": seconds,
                       "pairs_per_s": n / seconds, "tokens_per_s": sum(lengths) / seconds,
                       "gflop_per_s": flops / seconds / 1e9, "mfu_bf16": flops / seconds / peak["bf16"],
                       "peak_mib": mib}
                run.document["scoring"].append(row)
                run.save()
                print(f"  {what}: {row['pairs_per_s']:.1f} pairs/s, MFU {row['mfu_bf16']:.1%}", file=sys.stderr)
        del rm, mlm, hf_model, prepared
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    rows = run.document["scoring"]
    for row in rows:
        ref = [r for r in rows if r["shape"] == row["shape"] and r["length"] == row["length"]
               and r["method"] == "hf-padded"]
        row["speedup_vs_hf"] = row["pairs_per_s"] / ref[0]["pairs_per_s"] if ref else None
    run.save()


# ----------------------------------------------------------------------------- training
def training_section(run: Run, args, peak: dict, tokenizer) -> None:
    from tinyrm.data import PreferencePair
    from tinyrm.tools.synthetic import write_jsonl
    from tinyrm.train import TrainConfig, train

    what = f"training {args.train_shape} DoRA r{args.dora_rank} freeze {args.freeze_layers}"
    if run.left() < args.train_min_s:
        run.skip(what, "time budget")
        return
    steps = args.train_warmup + args.train_steps
    try:
        with tempfile.TemporaryDirectory(prefix="tinyrm-gpu-") as tmp:
            model_dir = Path(tmp) / "model"
            with torch.device(speedlib.device()):
                mlm = speedlib.random_modernbert(args.train_shape, tokenizer,
                                                 max_positions=max(8192, args.train_length))
            mlm.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
            raw = speedlib.synthetic_pairs(steps * args.train_pairs_per_step, args.train_length, spread=0.0, seed=7)
            data = write_jsonl([PreferencePair(prompt=p, chosen=a, rejected=b) for p, a, b in raw],
                               Path(tmp) / "train.jsonl")
            lengths = [min(args.train_length, len(tokenizer(f"{p} {a} {b}")["input_ids"]) + 24) for p, a, b in raw]
            del mlm
            gc.collect()
            micro = 2 * args.train_pairs_per_step  # both orders of every pair in the micro-batch
            config = TrainConfig(
                model=str(model_dir), data=[str(data)], output=str(Path(tmp) / "out"), objective="cloze",
                read="mask", max_length=args.train_length, micro_batch_size=micro, batch_size=micro,
                max_steps=steps, save_steps=0, lr=2e-5, warmup_ratio=0.0, dora_rank=args.dora_rank,
                freeze_layers=args.freeze_layers, precision=args.train_precision)
            result = train(config)
            rate, per_step = _steady(Path(config.output) / "metrics.jsonl", args.train_warmup,
                                     result.pairs / max(result.steps, 1))
            layers = speedlib.SHAPES[args.train_shape]["num_hidden_layers"]
            trained_share = (layers - args.freeze_layers) / layers
            flops_per_pair = _train_flops_per_pair(args.train_shape, tokenizer, lengths, trained_share)
            row = {"shape": args.train_shape, "dora_rank": args.dora_rank, "freeze_layers": args.freeze_layers,
                   "length": args.train_length, "pairs_per_step": result.pairs / max(result.steps, 1),
                   "steps": result.steps, "pairs_per_s": rate, "seconds_per_step": per_step,
                   "run_pairs_per_s": result.pairs_per_second, "trainable_parameters": result.trainable_parameters,
                   "total_parameters": result.total_parameters, "precision": args.train_precision,
                   "approx_mfu_bf16": (rate * flops_per_pair / peak["bf16"]) if rate else None}
            run.document["training"].append(row)
            run.save()
            print(f"  {what}: {rate or float('nan'):.1f} pairs/s steady", file=sys.stderr)
    except Exception as error:  # noqa: BLE001
        run.error(what, error)


def _steady(metrics: Path, warmup: int, pairs_per_step: float) -> tuple[float | None, float | None]:
    times = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record and "time" in record:
            times[int(record["step"])] = float(record["time"])
    last = max(times, default=0)
    if warmup not in times or last <= warmup:
        return None, None
    per_step = (times[last] - times[warmup]) / (last - warmup)
    return pairs_per_step / per_step, per_step


def _train_flops_per_pair(shape: str, tokenizer, lengths, trained_share: float) -> float:
    """Forward of both orders, plus 2x the forward share of the trained layers (backward), per pair."""
    with torch.device("meta"):  # shapes only, no memory
        model = speedlib.random_modernbert(shape, tokenizer)
    mean = sum(lengths) / max(len(lengths), 1)
    forward = speedlib.forward_flops(model, [int(mean)] * 2)
    return forward * (1 + 2 * trained_share)


# ----------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks the script end to end")
    p.add_argument("--budget-s", type=float, default=420.0, help="total time budget; sections past it are skipped")
    p.add_argument("--reserve-s", type=float, default=120.0, help="time kept for the training section")
    p.add_argument("--train-min-s", type=float, default=60.0, help="start training only with this much time left")
    p.add_argument("--shapes", nargs="+", default=["base", "large"], choices=list(speedlib.SHAPES))
    p.add_argument("--lengths", nargs="+", type=int, default=[128, 512, 2048])
    p.add_argument("--pairs", nargs="*", default=[], metavar="LENGTH=N", help="pairs per length (default 2048/512/128)")
    p.add_argument("--spread", type=float, default=0.5, help="lengths uniform in [(1 - spread) L, L]")
    p.add_argument("--methods", nargs="+", default=["hf-padded", "tinyrm"], choices=["hf-padded", "tinyrm"])
    p.add_argument("--hf-batch", type=int, default=32, help="sequences per forward pass of the plain loop")
    p.add_argument("--max-batch-tokens", type=int, default=65536, help="tinyrm's padded-token budget per pass")
    p.add_argument("--no-training", dest="training", action="store_false")
    p.add_argument("--train-shape", default="large", choices=list(speedlib.SHAPES))
    p.add_argument("--train-length", type=int, default=512)
    p.add_argument("--train-pairs-per-step", type=int, default=16)
    p.add_argument("--train-warmup", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--dora-rank", type=int, default=128)
    p.add_argument("--freeze-layers", type=int, default=12)
    p.add_argument("--train-precision", default="bf16", choices=["auto", "bf16", "fp32"])
    p.add_argument("--output", default=None, help="default $OUT/gpu_path.json, else runs/bench/gpu_path.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.shapes, args.lengths, args.train_shape = ["smoke"], [32, 64], "smoke"
        args.pairs = args.pairs or ["32=8", "64=4"]
        args.train_length, args.train_pairs_per_step, args.train_warmup, args.train_steps = 64, 2, 1, 1
        args.dora_rank, args.freeze_layers, args.reserve_s, args.train_min_s = 8, 1, 10.0, 5.0
        args.train_precision = "auto"
    args.pairs = {int(k): int(v) for k, v in (item.split("=", 1) for item in args.pairs)}
    output = args.output or (str(Path(os.environ["OUT"]) / "gpu_path.json") if os.environ.get("OUT")
                             else "runs/bench/gpu_path.json")
    run = Run(args.budget_s, output)
    info = speedlib.machine_info()
    for name in ("peft", "accelerate", "flash_attn"):
        spec = importlib.util.find_spec(name)
        info[name] = getattr(__import__(name), "__version__", "?") if spec else None
    run.document.update(machine=info, config={k: v for k, v in vars(args).items()})
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 peak = real fp32
    peak = {"bf16": speedlib.matmul_peak(torch.bfloat16, 512 if args.smoke else None),
            "fp32": speedlib.matmul_peak(torch.float32, 512 if args.smoke else None)}
    run.document["peak_flops"] = peak
    run.save()
    print(f"{info['device']}: matmul peak bf16 {peak['bf16'] / 1e12:.1f} TFLOP/s, fp32 {peak['fp32'] / 1e12:.1f} "
          f"TFLOP/s; flash-attn {info['flash_attn'] or 'not installed'}", file=sys.stderr)
    tokenizer = speedlib.synthetic_tokenizer()
    torch.set_grad_enabled(False)
    scoring_section(run, args, peak, tokenizer)
    torch.set_grad_enabled(True)
    if args.training:
        training_section(run, args, peak, tokenizer)
    run.save()
    print(f"\n{info['device']}, matmul peak bf16 {peak['bf16'] / 1e12:.1f} TFLOP/s; attention "
          f"{json.dumps(run.document.get('attention', {}))}\n")
    print(speedlib.markdown_table(run.document["scoring"], [
        ("shape", "shape", ""), ("length", "L", "d"), ("method", "method", ""), ("pairs", "pairs", "d"),
        ("tokens_per_sequence", "tokens/seq", ".0f"), ("pairs_per_s", "pairs/s", ".1f"),
        ("tokens_per_s", "tokens/s", ".0f"), ("speedup_vs_hf", "x hf-padded", ".2f"),
        ("mfu_bf16", "MFU bf16", ".1%"), ("peak_mib", "peak MiB", ".0f")]))
    if run.document["training"]:
        print()
        print(speedlib.markdown_table(run.document["training"], [
            ("shape", "shape", ""), ("dora_rank", "DoRA r", "d"), ("freeze_layers", "frozen", "d"),
            ("length", "L", "d"), ("pairs_per_step", "pairs/step", ".0f"), ("pairs_per_s", "pairs/s", ".1f"),
            ("seconds_per_step", "s/step", ".3f"), ("approx_mfu_bf16", "approx MFU bf16", ".1%"),
            ("trainable_parameters", "trainable", ",d")]))
    for item in run.document["skipped"] + run.document["errors"]:
        print(f"note: {item}")
    print(f"elapsed {time.monotonic() - run.start:.0f}s; wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
