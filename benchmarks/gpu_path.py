"""The GPU path in one short run (a lent H100/H200): scoring pairs/s and MFU, the host's own rate, training.

Sections under one time budget (``--budget-s``; the JSON, with the targets and decisions computed from it, is
rewritten after every measurement; SIGTERM, e.g. run.sh's timeout, ends the run with its report). The exit status
is 1 when any section fails (error and its innermost traceback in the JSON's ``errors``; with ``--smoke`` a skipped
section fails too), so a CPU ``--smoke`` before a device run means something. ``$CUDA_GATE`` (run.sh: the CUDA
pytest gate's outcome) goes into the JSON and the report's header.

1. bf16 and fp32 ``torch.matmul`` peak (8192^3, back-to-back after 0.5 s of warm-up; fp32 without TF32), and the
   datasheet's dense bf16 peak where the card is an H100 SXM or H200 (``speedlib.spec_bf16_peak``).
2. Scoring random ModernBERT-base / -large MLMs (speedlib.SHAPES, vocab 50368) at each ``--points`` cell
   (``512``: every sequence ~512 tokens; ``64-512``: lengths uniform in [64, 512]), both orders:
   ``hf-padded`` (plain loop: bf16, SDPA, input order, ``--hf-batch`` rows, full logits),
   ``tinyrm-padded`` / ``tinyrm-packed`` (``compare_batch`` with ``engine.config.attention`` padded /
   packed, ``--max-batch-tokens`` per pass: ``auto`` = ``tinyrm.inference.budget.default_batch_tokens``),
   ``tinyrm-packed-compiled`` (packed with ``engine.config.compile``: the layers' regions through
   ``torch.compile``; ``x packed``) and ``host-only`` (the packed pipeline with the forward replaced by a
   no-op, ``gpu_lib.forward_removed``; issue 26 wants it >= 3x the faster packed rate; after a point's first
   host-only row, ``host_split``: the same work serially, split into the Rust tokenizer's time and Python's
   under the GIL, whose inverse bounds the host whatever its threads). Each is warmed up (4 pairs; the
   compiled one also 64 more, so its dynamic-shape graph is built; ``warmup_s``), then on ``--warmup-pairs``
   (0: two of the engine's ``--chunk-pairs`` chunks, so the host pipeline runs; ``--ref-warmup-pairs`` for the
   padded baselines) for a rate estimate, then timed on ``--pairs`` (``--ref-pairs`` for the two padded
   methods), cut to ~``--point-s`` seconds at the warm-up rate and to the time left above the reserve
   (``capped``). pairs/s, tokens/s, MFU from useful FLOPs (speedlib.forward_flops), peak GPU memory.
   Order (gpu_scoring.Scoring), so a run short of time loses the optional rows: every cell's tinyrm-packed,
   each followed by its tinyrm-padded; host-only at the engine's auto threads; then section 3; then
   compiled, host-only at ``--host-workers``' other values, hf-padded, the ``--profile-shapes`` profiles.
   A row starts only with ``--reserve-s`` (before training) + its expected time (``--point-s`` +
   ``--row-overhead-s``, + ``--compile-s`` for the compiled one) left.
3. Training (``tinyrm.train``): large shape, DoRA r128, 12 frozen layers, bf16, ``--train-length`` 512,
   per ``--train-attention`` (padded; packed only where TrainConfig has ``attention``): steady pairs/s
   after ``--train-warmup`` steps and MFU from the executed FLOP count (and the approximate one the issue's
   12% used). The synthetic pairs alternate which response is longer, so the recipe's default
   ``--length-balance`` keeps every pair. Each run's optimizer steps 1-2 (inside the warm-up) under
   ``torch.profiler`` (``profiled_steps``; ``profile[]`` entries with ``training``): the top kernels per step and
   the step's wall time, so a missed target says whether the GPU waited.
   The scoring profiles, per ``--profile-shapes`` shape: ``torch.profiler`` over one packed batch (as many pairs
   as the scoring budget holds), eager and compiled, in inference mode as scoring runs (``profile[]``: the top
   kernels by device time; ``graphs_compiled``: graphs its warm-up compiled; on CUDA ``busy``, device time over
   the unprofiled pass's wall time: what CUDA graphs could save is the rest).
4. Budget sweep (last, first to go): ``tinyrm-packed`` at ``--sweep-point`` on ``--sweep-shape`` per
   ``--sweep-tokens`` value, against section 2's auto-budget row.

Each section, and each row within it, under its own try: one failure loses only what it was measuring.
Last, ``gpu_targets``: each of issue 26's targets with its figure and verdict, and the defaults the run
decides (``targets[]``, ``decisions[]``; two tables at the end of the report).

Inputs are random words of a one-token-per-word vocabulary (gpu_lib.synthetic_tokenizer): no data, hub
or download. Needs torch, transformers, tokenizers, peft, accelerate, datasets; tinyrm from ``src/``.

    python benchmarks/gpu_path.py          # on the GPU (JSON to $OUT/gpu_path.json when $OUT is set)
    python benchmarks/gpu_path.py --smoke  # every section with tiny sizes, any device (~30 s on 2 cores)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# TOKENIZERS_PARALLELISM is left as the caller has it (unset: the Rust tokenizer's own threads, as users get).
ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("tinyrm") is None:  # the repository copy on the device, not installed
    sys.path.insert(0, str(ROOT / "src"))

import gpu_lib  # noqa: E402
import gpu_targets  # noqa: E402
import speedlib  # noqa: E402
import torch  # noqa: E402
from gpu_scoring import METHODS, Scoring, sweep_section  # noqa: E402
from gpu_training import training_section  # noqa: E402

SMOKE = dict(shapes=["smoke"], points=["64", "16-64"], pairs_n=12, ref_pairs=6, warmup_pairs=0, ref_warmup_pairs=4,
             chunk_pairs=4, sweep_shape="smoke",
             sweep_point="16-64", sweep_pairs=8, sweep_tokens=[256, 1024], sweep_min_s=5.0, train_shape="smoke",
             train_length=64, train_pairs_per_step=2, train_warmup=1, train_steps=2, dora_rank=8, freeze_layers=1,
             reserve_s=10.0, train_min_s=5.0, train_precision="auto", host_workers=[0, 2], profile_shapes=["smoke"],
             profile_pairs=4, profile_passes=1, profile_top=5)


# ----------------------------------------------------------------------------- driver
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks every section end to end")
    p.add_argument("--budget-s", type=float, default=420.0, help="total time budget; sections past it are skipped")
    p.add_argument("--reserve-s", type=float, default=90.0, help="time kept for the training section")
    p.add_argument("--train-min-s", type=float, default=35.0, help="start a training run only with this much left")
    p.add_argument("--shapes", nargs="+", default=["base", "large"], choices=list(speedlib.SHAPES))
    p.add_argument("--points", nargs="+", default=["512", "64-512"], help="L (every sequence ~L tokens) or LO-HI")
    p.add_argument("--pairs", dest="pairs_n", type=int, default=20000,
                   help="pairs timed per point (tinyrm-packed, host-only)")
    p.add_argument("--ref-pairs", type=int, default=1024, help="pairs timed per point for hf-padded and tinyrm-padded")
    p.add_argument("--warmup-pairs", type=int, default=0,
                   help="untimed warm-up (and rate estimate) before each; 0: two pipeline chunks (--chunk-pairs)")
    p.add_argument("--ref-warmup-pairs", type=int, default=128, help="the same for hf-padded and tinyrm-padded")
    p.add_argument("--chunk-pairs", type=int, default=0, help="the engine's pipeline chunk; 0: its default (2048)")
    p.add_argument("--point-s", type=float, default=30.0, help="cut a measurement to ~this many seconds")
    p.add_argument("--row-overhead-s", type=float, default=10.0,
                   help="a row's warm-up and bookkeeping beyond --point-s, in the time it must find left to start")
    p.add_argument("--compile-s", type=float, default=60.0, help="what a compiled row adds to that: its compile")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="methods measured (in the run's fixed order, gpu_scoring.Scoring)")
    p.add_argument("--host-workers", nargs="+", type=int, default=[0, 8],
                   help="host-only rows, one per value: the pipeline's worker threads (0 = the engine's auto)")
    p.add_argument("--hf-batch", type=int, default=32, help="sequences per forward pass of the plain loop")
    p.add_argument("--max-batch-tokens", default="auto",
                   help="tinyrm's token budget per pass: auto (from the free GPU memory) or N")
    p.add_argument("--profile-shapes", nargs="*", default=["base"], choices=list(speedlib.SHAPES),
                   help="shapes whose packed forward is profiled after their scoring rows (none: no profile)")
    p.add_argument("--profile-pairs", type=int, default=0,
                   help="pairs (both orders) in the profiled batch; 0: as many as the scoring token budget holds")
    p.add_argument("--profile-passes", type=int, default=3)
    p.add_argument("--profile-top", type=int, default=15, help="kernels (ops off CUDA) kept per profile")
    p.add_argument("--sweep-tokens", nargs="*", type=int, default=[16384, 65536], help="fixed budgets to compare")
    p.add_argument("--sweep-shape", default="base", choices=list(speedlib.SHAPES))
    p.add_argument("--sweep-point", default="64-512")
    p.add_argument("--sweep-pairs", type=int, default=8192)
    p.add_argument("--sweep-min-s", type=float, default=20.0, help="run a sweep value only with this much time left")
    p.add_argument("--no-training", dest="training", action="store_false")
    p.add_argument("--train-attention", nargs="+", choices=["padded", "packed"], default=None,
                   help="default: padded, and packed where this tinyrm trains packed")
    p.add_argument("--train-shape", default="large", choices=list(speedlib.SHAPES))
    p.add_argument("--train-length", type=int, default=512)
    p.add_argument("--train-spread", type=float, default=0.0, help="training lengths uniform in [(1 - s) L, L]")
    p.add_argument("--train-pairs-per-step", type=int, default=16)
    p.add_argument("--train-warmup", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--dora-rank", type=int, default=128)
    p.add_argument("--freeze-layers", type=int, default=12)
    p.add_argument("--train-precision", default="bf16", choices=["auto", "bf16", "fp32"])
    p.add_argument("--output", default=None, help="default $OUT/gpu_path.json, else runs/bench/gpu_path.json")
    args = p.parse_args(argv)
    if args.smoke:  # tiny defaults; flags given explicitly still win
        p.set_defaults(**SMOKE)
        args = p.parse_args(argv)
    for spec in [*args.points, args.sweep_point]:
        try:
            gpu_lib.parse_point(spec)
        except ValueError as error:
            p.error(str(error))
    if args.max_batch_tokens != "auto" and not (args.max_batch_tokens.isdigit() and int(args.max_batch_tokens) > 0):
        p.error(f"--max-batch-tokens is auto or a positive integer, got {args.max_batch_tokens!r}")
    packed_ok = gpu_lib.packed_training_available()
    if args.train_attention is None:
        args.train_attention = ["padded", "packed"] if packed_ok else ["padded"]
    elif "packed" in args.train_attention and not packed_ok:
        p.error("--train-attention packed: packed training not available in this tinyrm "
                "(its TrainConfig has no 'attention' field)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output or (str(Path(os.environ["OUT"]) / "gpu_path.json") if os.environ.get("OUT")
                             else "runs/bench/gpu_path.json")
    run = gpu_lib.BudgetRun(args.budget_s, output, derive=gpu_targets.derived)
    with gpu_lib.sigterm_raises(run):
        try:
            sections(run, args)
        except gpu_lib.Terminated as error:
            run.error("gpu_path stopped by SIGTERM (run.sh's timeout): the report covers what was measured", error)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the report takes a second: let it finish (timeout -k kills)
        run.stopped = False  # an error in the verdicts below is recorded, not a second stop
        try:
            run.document.update(gpu_targets.derived(run.document))
        except Exception as error:  # noqa: BLE001 - the measurements stand without the verdicts
            run.error("targets", error)
        run.save()
        report(run, output)
    failed = run.document["errors"] or (args.smoke and run.document["skipped"])
    if failed:
        print(f"FAILED: {len(run.document['errors'])} error(s), {len(run.document['skipped'])} skipped "
              f"section(s); see {output}", file=sys.stderr)
    return 1 if failed else 0


def sections(run: gpu_lib.BudgetRun, args: argparse.Namespace) -> None:
    """Setup, then each section under its own try (one failure never skips the rest): scoring's core rows,
    training, scoring's optional rows, the sweep."""
    try:
        info = speedlib.machine_info()
        for name in ("peft", "accelerate", "flash_attn"):
            spec = importlib.util.find_spec(name)
            info[name] = getattr(__import__(name), "__version__", "?") if spec else None
        info["tokenizers_parallelism"] = os.environ.get("TOKENIZERS_PARALLELISM")
        run.document.update(machine=info, config=dict(vars(args)), cuda_gate=os.environ.get("CUDA_GATE"))
        if not gpu_lib.packed_training_available():
            run.document["notes"].append("packed training not available in this tinyrm: training rows are padded only")
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 peak = real fp32
        peak = {"bf16": speedlib.matmul_peak(torch.bfloat16, 512 if args.smoke else None),
                "fp32": speedlib.matmul_peak(torch.float32, 512 if args.smoke else None),
                "bf16_spec": speedlib.spec_bf16_peak(info["device"]) if info["device"] != "cpu" else None}
        run.document["peak_flops"] = peak
        run.save()
        print(f"{info['device']}: matmul peak bf16 {peak['bf16'] / 1e12:.1f} TFLOP/s, fp32 {peak['fp32'] / 1e12:.1f} "
              f"TFLOP/s", file=sys.stderr)
        tokenizer = gpu_lib.synthetic_tokenizer()
    except Exception as error:  # noqa: BLE001 - every section needs the peak and the tokenizer
        run.error("setup", error)
        return
    # The training reserve holds only while training is still to come.
    reserve = args.reserve_s if args.training else 0.0
    scoring = None
    try:  # Grad mode per section as a context, so main() called in-process (tests) leaves it as it was.
        scoring = Scoring(run, args, peak, tokenizer)
        with torch.no_grad():
            scoring.core(reserve)
    except Exception as error:  # noqa: BLE001
        run.error("scoring", error)
    if args.training:
        try:
            with torch.enable_grad():
                training_section(run, args, peak, tokenizer)
        except Exception as error:  # noqa: BLE001
            run.error("training", error)
    try:
        if scoring is not None:
            with torch.no_grad():
                scoring.rest()
    except Exception as error:  # noqa: BLE001
        run.error("scoring after training", error)
    finally:
        if scoring is not None:
            scoring.close()
    try:
        with torch.no_grad():
            sweep_section(run, args, peak, tokenizer)
    except Exception as error:  # noqa: BLE001
        run.error("sweep", error)


def report(run: gpu_lib.BudgetRun, output: str) -> None:
    doc = run.document
    peak, spec = doc.get("peak_flops", {}).get("bf16", 0.0), doc.get("peak_flops", {}).get("bf16_spec")
    gate = doc.get("cuda_gate")
    if gate and gate.startswith("FAILED"):
        print(f"\nCUDA gate FAILED: figures invalid ({gate}; $OUT/pytest_cuda.log)")
    spec_text = f"spec {spec / 1e12:.1f} TFLOP/s, measured {peak / spec:.0%} of it" if spec else "spec unknown"
    print(f"\n{doc.get('machine', {}).get('device')}, matmul peak bf16 {peak / 1e12:.1f} TFLOP/s ({spec_text}); "
          f"CUDA gate {gate or 'not run'}; attention {json.dumps(doc.get('attention', {}))}\n")
    scoring = [("shape", "shape", ""), ("point", "L", ""), ("method", "method", ""), ("pairs", "pairs", "d"),
               ("tokens_per_sequence", "tokens/seq", ".0f"), ("max_batch_tokens", "tokens/pass", "d"),
               ("pairs_per_s", "pairs/s", ".1f"), ("tokens_per_s", "tokens/s", ".0f"),
               ("speedup_vs_hf", "x hf-padded", ".2f"), ("host_vs_packed", "host / packed", ".2f"),
               ("host_workers", "host threads", "d"), ("mfu_bf16", "MFU bf16", ".1%"), ("peak_mib", "peak MiB", ".0f"),
               ("speedup_vs_packed", "x packed", ".2f"), ("warmup_s", "warm-up s", ".1f"),
               ("capped", "cut by time", ""), ("pipelined", "pipeline", "")]
    print(speedlib.markdown_table(doc["scoring"], scoring))
    for row in doc["scoring"]:
        if row.get("graphs_compiled_timed"):
            print(f"{row['method']} {row['shape']} {row['point']}: {row['graphs_compiled_timed']} graph(s) compiled "
                  "during the timing (a new batch shape recompiled; its rate includes that)")
        if row.get("host_vs_packed") is not None:
            verdict = "met" if row["host_vs_packed"] >= 3 else "NOT met"
            print(f"host-only {row['shape']} {row['point']} ({row['host_workers']} threads): "
                  f"{row['host_vs_packed']:.2f}x the packed rate "
                  f"(target >= 3x: {verdict})")
        split = row.get("host_split")
        if split:
            ceiling = split["gil_ceiling_pairs_per_s"]
            print(f"host split {row['shape']} {row['point']} (serial, {split['pairs']} pairs): tokenizer "
                  f"{split['tokenizer_us']:.1f} us/pair, Python {split['python_us']:.1f} us/pair under the GIL"
                  + (f" (no thread count passes {ceiling:,.0f} pairs/s)" if ceiling else ""))
    if doc["training"]:
        print()
        print(speedlib.markdown_table(doc["training"], [
            ("shape", "shape", ""), ("attention", "attention", ""), ("dora_rank", "DoRA r", "d"),
            ("freeze_layers", "frozen", "d"), ("length", "L", "d"), ("pairs_per_step", "pairs/step", ".0f"),
            ("pairs_per_s", "pairs/s", ".1f"), ("seconds_per_step", "s/step", ".3f"),
            ("approx_mfu_bf16", "approx MFU bf16", ".1%"), ("executed_mfu_bf16", "executed MFU bf16", ".1%"),
            ("trainable_parameters", "trainable", ",d")]))
    for prof in doc.get("profile", []):
        if prof.get("training"):
            busy = (f" of {prof['wall_ms_per_pass']:.1f} ms wall ({prof['busy']:.0%} busy)"
                    if prof.get("busy") is not None else "")  # on the CPU the two are the same clock
            print(f"\nprofile training {prof['shape']} L={prof['point']} {prof['training']}: {prof['sequences']} "
                  f"sequences per step, {prof['ms_per_pass']:.1f} ms {prof['clock']} time per optimizer step{busy}")
        else:
            busy = (f", {prof['wall_ms_per_pass']:.1f} ms wall unprofiled ({prof['busy']:.0%} busy)"
                    if prof.get("busy") is not None else "")
            print(f"\nprofile {prof['shape']} {prof['point']} {'compiled' if prof['compiled'] else 'eager'}: "
                  f"{prof['sequences']} sequences, {prof['tokens']} tokens, {prof['ms_per_pass']:.1f} ms per pass "
                  f"({prof['clock']} time{busy}; {prof.get('graphs_compiled', 0)} graph(s) compiled by its warm-up)")
        print(speedlib.markdown_table(prof["top"], [("name", "op / kernel", ""), ("calls", "calls", "d"),
                                                    ("ms_per_pass", "ms / pass", ".2f"), ("share", "share", ".1%")]))
    if doc["sweep"]:
        print()
        print(speedlib.markdown_table(doc["sweep"], [*scoring[:4], *scoring[5:7], ("vs_auto_budget", "x auto budget",
                                                                                   ".2f"), *scoring[11:13]]))
    print(f"\n{gpu_targets.report(doc)}\n")
    for item in doc["notes"] + doc["skipped"] + [{k: e[k] for k in ("what", "error")} for e in doc["errors"]]:
        print(f"note: {item}")
    print(f"elapsed {time.monotonic() - run.start:.0f}s; wrote {output}")


if __name__ == "__main__":
    raise SystemExit(main())
