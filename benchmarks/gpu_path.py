"""The GPU path in one short run (a lent H100/H200): scoring pairs/s and MFU, the host's own rate, training.

Sections under one time budget (``--budget-s``; the JSON is rewritten after every measurement). The
exit status is 1 when any section fails (error and traceback in the JSON's ``errors``; with
``--smoke`` a skipped section fails too), so a CPU ``--smoke`` before a device run means something.

1. bf16 and fp32 ``torch.matmul`` peak (8192^3; fp32 without TF32).
2. Scoring random ModernBERT-base / -large MLMs (speedlib.SHAPES, vocab 50368) at each ``--points``
   entry (``512``: every sequence ~512 tokens; ``64-512``: lengths uniform in [64, 512]), both orders:
   ``hf-padded`` (plain loop: bf16, SDPA, input order, ``--hf-batch`` rows, full logits),
   ``tinyrm-padded`` / ``tinyrm-packed`` (``compare_batch`` with ``engine.config.attention`` padded /
   packed, ``--max-batch-tokens`` per pass: ``auto`` = ``tinyrm.inference.budget.default_batch_tokens``),
   ``tinyrm-packed-compiled`` (packed with ``engine.config.compile``: the layers' regions through
   ``torch.compile``; ``x packed``) and ``host-only`` (the packed pipeline with the forward replaced by a
   no-op, ``speedlib.forward_removed``; issue 26 wants it >= 3x the faster packed rate; after a point's first
   host-only row, ``host_split``: the same work serially, split into the Rust tokenizer's time and Python's
   under the GIL, whose inverse bounds the host whatever its threads). Each is warmed up
   (4 pairs; the compiled one also 64 more, so its dynamic-shape graph is built; ``warmup_s``), then
   ``--warmup-pairs`` for a rate estimate, then timed on ``--pairs`` (``--ref-pairs`` for the two padded
   methods), cut to ~``--point-s`` seconds at the warm-up rate (``capped``). pairs/s, tokens/s, MFU from
   useful FLOPs (speedlib.forward_flops), peak GPU memory. Measured in ``METHODS`` order: the target rows
   first, the two padded baselines last.
3. Training (``tinyrm.train``): large shape, DoRA r128, 12 frozen layers, bf16, ``--train-length`` 512,
   per ``--train-attention`` (padded; packed only where TrainConfig has ``attention``): steady pairs/s
   after ``--train-warmup`` steps and an approximate MFU. The synthetic pairs alternate which response
   is longer, so the recipe's default ``--length-balance`` keeps every pair. Each run's optimizer steps 1-2
   (inside the warm-up) under ``torch.profiler`` (``profiled_steps``; ``profile[]`` entries with ``training``):
   the top kernels per step and the step's wall time, so a missed target says whether the GPU waited.
   After a ``--profile-shapes`` shape's scoring rows: ``torch.profiler`` over one packed batch, eager and
   compiled (``profile[]``: the top ops and kernels by device time).
4. Budget sweep (last, first to go): ``tinyrm-packed`` at ``--sweep-point`` on ``--sweep-shape`` per
   ``--sweep-tokens`` value, against section 2's auto-budget row.

Inputs are random words of a one-token-per-word vocabulary (speedlib.synthetic_tokenizer): no data, hub
or download. Needs torch, transformers, tokenizers, peft, accelerate, datasets; tinyrm from ``src/``.

    python benchmarks/gpu_path.py          # on the GPU (JSON to $OUT/gpu_path.json when $OUT is set)
    python benchmarks/gpu_path.py --smoke  # every section with tiny sizes, any device (~30 s on 2 cores)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# TOKENIZERS_PARALLELISM is left as the caller has it (unset: the Rust tokenizer's own threads, as users get).
ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("tinyrm") is None:  # the repository copy on the device, not installed
    sys.path.insert(0, str(ROOT / "src"))

import speedlib  # noqa: E402
import torch  # noqa: E402

# Measured in this order at each point: the rows issue 26's targets read first, so a run short of time loses
# the baselines before them.
METHODS = ("tinyrm-packed", "tinyrm-packed-compiled", "host-only", "tinyrm-padded", "hf-padded")
ATTENTION = {"tinyrm-padded": "padded", "tinyrm-packed": "packed", "tinyrm-packed-compiled": "packed",
             "host-only": "packed"}
COMPILED = ("tinyrm-packed-compiled",)
PACKED = ("tinyrm-packed", *COMPILED)  # the GPU rates the host-only row is held against (the faster one)
SPLIT_PAIRS = 4096  # pairs of the serial host split after a point's first host-only row
TRAIN_PROFILE_STEPS = 2  # optimizer steps profiled per training row (after one warm-up step)
REFERENCE = ("hf-padded", "tinyrm-padded")  # timed on --ref-pairs: the baselines, slow at 512 tokens
SMOKE = dict(shapes=["smoke"], points=["64", "16-64"], pairs_n=12, ref_pairs=6, warmup_pairs=4, sweep_shape="smoke",
             sweep_point="16-64", sweep_pairs=8, sweep_tokens=[256, 1024], sweep_min_s=5.0, train_shape="smoke",
             train_length=64, train_pairs_per_step=2, train_warmup=1, train_steps=2, dora_rank=8, freeze_layers=1,
             reserve_s=10.0, train_min_s=5.0, train_precision="auto", host_workers=[0, 2], profile_shapes=["smoke"],
             profile_pairs=4, profile_passes=1, profile_top=5)


# ----------------------------------------------------------------------------- scoring
def build_scorer(shape: str, tokenizer, max_length: int, budget: str, plain: bool = True):
    """(random MLM, RewardModel over it, the plain loop's bf16 copy (or None), the budget per pass)."""
    from tinyrm.config import RewardConfig
    from tinyrm.inference.budget import default_batch_tokens
    from tinyrm.pairwise.model import RewardModel

    dev = speedlib.device()
    with torch.device(dev):
        mlm = speedlib.random_modernbert(shape, tokenizer, max_positions=max(8192, max_length))
    rm = RewardModel(mlm, tokenizer, RewardConfig(max_length=max_length, base_model=f"{shape} shape"), device=str(dev))
    rm.engine.config.precision = "bf16"
    rm.engine.config.recheck_margin = 0.0  # random weights: every pair is a near-tie
    tokens = default_batch_tokens(dev, mlm, max_length=max_length) if budget == "auto" else int(budget)
    rm.engine.config.max_batch_tokens = tokens
    hf_model = copy.deepcopy(mlm).to(torch.bfloat16).eval() if plain else None
    try:
        if hf_model is not None:
            hf_model.set_attn_implementation("sdpa")
    except (AttributeError, ImportError, ValueError):
        pass
    return mlm, rm, hf_model, tokens


def measure(run: speedlib.BudgetRun, args, what: str, method: str, rm, hf_model, pairs, target: int) -> tuple | None:
    """Warm up, then time ``method`` on up to ``target`` pairs: (Timing, pairs timed, capped, seconds of the
    first warm-up calls: the bf16 copy, a compile; graphs compiled during the timing: 0 unless a new batch
    shape recompiled), or None."""
    if run.left() < args.reserve_s:
        run.skip(what, "time budget")
        return None
    try:
        if method != "hf-padded":
            rm.engine.config.attention = ATTENTION[method]
            rm.engine.config.compile = method in COMPILED
            if ATTENTION[method] == "packed" and not rm.engine.uses_packed():
                raise RuntimeError("the packed forward does not run for this model here (it would score padded)")

        def fn(items):
            rm.encoder._cache.clear()  # tokenisation is part of the work, for every method
            if method == "hf-padded":
                return speedlib.hf_padded(hf_model, rm, items, args.hf_batch)
            if method == "host-only":
                with speedlib.forward_removed(rm.engine):
                    return rm.compare_batch(items)
            return rm.compare_batch(items)

        start = time.perf_counter()
        fn(pairs[:4])  # warm-up: the bf16 copy, kernel selection
        if method in COMPILED:  # a second size: the dynamic-shape graphs, compiled once, outside the estimate
            fn(pairs[4:68])
        first_s = time.perf_counter() - start
        warm = speedlib.timed(fn, pairs[: args.warmup_pairs])  # more warm-up (allocator), and the rate estimate
        rate = min(args.warmup_pairs, len(pairs)) / max(warm.seconds, 1e-9)
        n = min(target, len(pairs), max(args.warmup_pairs, int(rate * args.point_s)))
        graphs = _graphs()
        timing = speedlib.timed(fn, pairs[:n])
        return timing, n, n < target, first_s, _graphs() - graphs
    except Exception as error:  # noqa: BLE001 - e.g. out of memory: record, go on
        run.error(what, error)
        speedlib.free_memory()
        return None


def _graphs() -> int:
    """torch.compile's graphs made so far in this process (dynamo's counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def score_point(run: speedlib.BudgetRun, args, peak: dict, shape: str, spec: str, mlm, rm, hf_model, tokens: int,
                methods, pairs, lengths: speedlib.EncodedLengths):
    """Rows (dicts) of ``methods`` at one point, yielded as each is measured."""
    from tinyrm.inference.pipeline import host_workers

    runs = [(m, w) for m in methods for w in (args.host_workers if m == "host-only" else [None])]
    for method, workers in runs:
        what = f"scoring {shape} {spec} {method} ({tokens} tokens/pass)"
        if workers is not None:  # the host pipeline (on, as on a GPU, also on the CPU), with its threads (0: auto)
            rm.engine.config.host_workers, rm.engine.config.overlap = workers, "on"
            what += f" host_workers={workers or 'auto'}"
        try:
            result = measure(run, args, what, method, rm, hf_model, pairs,
                             args.ref_pairs if method in REFERENCE else args.pairs_n)
        finally:
            rm.engine.config.host_workers, rm.engine.config.overlap, rm.engine.config.compile = 0, "auto", False
        if result is None:
            continue
        timing, n, capped, first_s, recompiled = result
        seen = lengths.first(rm, n)
        flops = speedlib.forward_flops(mlm, seen)
        row = {"shape": shape, "point": spec, "method": method, "attention": ATTENTION.get(method, "sdpa"),
               "max_batch_tokens": None if method == "hf-padded" else tokens, "pairs": n, "capped": capped,
               "tokens_per_sequence": sum(seen) / len(seen), "seconds": timing.seconds,
               "pairs_per_s": n / timing.seconds, "tokens_per_s": sum(seen) / timing.seconds,
               "gflop_per_s": flops / timing.seconds / 1e9,
               "mfu_bf16": None if method == "host-only" else flops / timing.seconds / peak["bf16"],
               "peak_mib": timing.peak_mib, "warmup_s": first_s, "graphs_compiled_timed": recompiled,
               "host_workers": host_workers(workers or 0, rm.device) if method != "hf-padded" else None}
        print(f"  {what}: {n} pairs, {row['pairs_per_s']:.1f} pairs/s"
              + (f", MFU {row['mfu_bf16']:.1%}" if row["mfu_bf16"] is not None else ""), file=sys.stderr)
        if method == "host-only" and workers == args.host_workers[0]:
            row["host_split"] = _host_split(run, what, rm, pairs[: min(n, SPLIT_PAIRS)])
        yield row


def _host_split(run: speedlib.BudgetRun, what: str, rm, pairs) -> dict | None:
    """``speedlib.host_split`` (where the host's time goes: the tokenizer, or Python under the GIL), or None."""
    try:
        return speedlib.host_split(rm, pairs)
    except Exception as error:  # noqa: BLE001 - record, go on
        run.error(f"{what} host split", error)
        return None


def scoring_section(run: speedlib.BudgetRun, args, peak: dict, tokenizer) -> None:
    max_length = max(speedlib.parse_point(spec)[1] for spec in args.points)
    pairs = {spec: speedlib.point_pairs(max(args.pairs_n, args.ref_pairs), spec, seed=k)
             for k, spec in enumerate(args.points)}
    lengths = {spec: speedlib.EncodedLengths(pairs[spec]) for spec in args.points}
    for shape in args.shapes:
        if run.left() < args.reserve_s:
            run.skip(f"scoring {shape}", "time budget")
            continue
        try:
            mlm, rm, hf_model, tokens = build_scorer(shape, tokenizer, max_length, args.max_batch_tokens)
            rm.engine.config.attention = "packed"
            run.document.setdefault("attention", {})[shape] = {
                "hf-padded": getattr(hf_model.config, "_attn_implementation", "?"), "max_batch_tokens": tokens,
                "packed_runs": rm.engine.uses_packed(), "varlen": speedlib.varlen_info(rm.device)}
        except Exception as error:  # noqa: BLE001 - record and go on with the next shape
            run.error(f"building {shape}", error)
            continue
        for spec in args.points:
            for row in score_point(run, args, peak, shape, spec, mlm, rm, hf_model, tokens, args.methods,
                                   pairs[spec], lengths[spec]):
                run.document["scoring"].append(row)
                _ratios(run.document["scoring"], run.document["sweep"])
                run.save()
        if shape in args.profile_shapes:
            profile_packed(run, args, shape, args.points[0], rm, pairs[args.points[0]])
        del rm, mlm, hf_model
        speedlib.free_memory()


def _ratios(rows: list[dict], sweep: list[dict]) -> None:
    """x hf-padded on every row; x tinyrm-packed on compiled rows; on host-only rows host / the faster packed
    method's pairs/s (issue 26: >= 3); on sweep rows x the auto budget's tinyrm-packed row of the same shape
    and point."""
    def rate(row: dict, *methods: str) -> float | None:
        found = [r["pairs_per_s"] for r in rows
                 if (r["shape"], r["point"]) == (row["shape"], row["point"]) and r["method"] in methods]
        return max(found) if found else None

    for kind, group in (("scoring", rows), ("sweep", sweep)):
        for row in group:
            hf, packed = rate(row, "hf-padded"), rate(row, "tinyrm-packed")
            row["speedup_vs_hf"] = row["pairs_per_s"] / hf if hf and row["method"] != "host-only" else None
            if kind == "sweep":
                row["vs_auto_budget"] = row["pairs_per_s"] / packed if packed else None
            elif row["method"] in COMPILED:
                row["speedup_vs_packed"] = row["pairs_per_s"] / packed if packed else None
            elif row["method"] == "host-only":
                fastest = rate(row, *PACKED)
                row["host_vs_packed"] = row["pairs_per_s"] / fastest if fastest else None


def profile_packed(run: speedlib.BudgetRun, args, shape: str, spec: str, rm, pairs) -> None:
    """Where a packed forward's time goes, eager and compiled: ``torch.profiler`` over ``--profile-passes``
    passes of one packed batch (``--profile-pairs`` pairs, both orders), the ``--profile-top`` ops and kernels
    by self device time (CPU time off CUDA), so a run that misses a target also says what to fuse next."""
    from torch.profiler import ProfilerActivity, profile

    from tinyrm.inference.varlen import pack

    what = f"profile {shape} {spec}"
    if run.left() < args.reserve_s + 15:
        run.skip(what, "time budget")
        return
    cuda = rm.device.type == "cuda"
    try:
        chosen = pairs[: args.profile_pairs]
        batch = pack([rm.encode(p, a, b) for p, a, b in chosen] + [rm.encode(p, b, a) for p, a, b in chosen], rm.device)
        for compiled in (False, True):
            rm.engine.config.attention, rm.engine.config.compile = "packed", compiled
            forward = rm.engine.prepared().packed
            forward(batch)  # warm-up (a compile, if no earlier row made the graphs)
            speedlib.sync()
            with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
                for _ in range(args.profile_passes):
                    forward(batch)
                speedlib.sync()
            run.document.setdefault("profile", []).append({
                "shape": shape, "point": spec, "compiled": compiled, "sequences": batch.batch_size,
                "tokens": int(batch.cu_seqlens[-1]), **_top_events(prof, cuda, args.profile_passes, args.profile_top)})
            run.save()
    except Exception as error:  # noqa: BLE001 - record, go on
        run.error(what, error)
    finally:
        rm.engine.config.compile = False


def _top_events(prof, cuda: bool, passes: int, top: int) -> dict:
    """A finished ``torch.profiler`` run over ``passes`` passes (or steps): its ``top`` ops and kernels by self
    device time (CPU time off CUDA), per pass."""
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    # A scheduled run marks each step (ProfilerStep#n): its host time is the step's wall time, against which
    # the device time says how busy the device was (a low share: the device waits on the host).
    steps = [e for e in events if e.key.startswith("ProfilerStep")]
    wall = sum(e.cpu_time_total for e in steps) / 1e3 / passes if steps else None
    return {"clock": "device" if cuda else "cpu", "ms_per_pass": total / 1e3 / passes, "wall_ms_per_pass": wall,
            "top": [{"name": e.key, "calls": e.count // passes, "ms_per_pass": getattr(e, key) / 1e3 / passes,
                     "share": getattr(e, key) / total} for e in events[:top]]}


@contextmanager
def profiled_steps(cuda: bool, top: int, steps: int = TRAIN_PROFILE_STEPS) -> Iterator[list[dict]]:
    """``torch.profiler`` over optimizer steps 1 to ``steps`` of whatever trains inside the block (step 0
    warms the profiler up): a global optimizer-step hook advances its schedule, so the trainer is not
    touched. Yields a list that holds the profile (``_top_events``, per step) once those steps ran."""
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerActivity, profile, schedule

    found: list[dict] = []
    prof = profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])],
                   schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
                   on_trace_ready=lambda done: found.append(_top_events(done, cuda, steps, top)))
    hook = register_optimizer_step_post_hook(lambda *args, **kwargs: prof.step())
    try:
        with prof:
            yield found
    finally:
        hook.remove()


def sweep_section(run: speedlib.BudgetRun, args, peak: dict, tokenizer) -> None:
    """tinyrm-packed at one point for each fixed budget per pass (the auto budget's row is in scoring)."""
    spec = args.sweep_point
    # The scoring point's own pairs (a prefix: same seed) where it was one, so "x auto budget" compares like with like.
    pairs = speedlib.point_pairs(args.sweep_pairs, spec, seed=args.points.index(spec) if spec in args.points else 99)
    lengths = speedlib.EncodedLengths(pairs)
    max_length = max(speedlib.parse_point(p)[1] for p in [*args.points, spec])  # as in scoring: the same encodings
    # The sweep runs last: its own time floor, not the training reserve.
    sweep_args = argparse.Namespace(**{**vars(args), "pairs_n": args.sweep_pairs, "reserve_s": args.sweep_min_s})
    for tokens in args.sweep_tokens:
        if run.left() < args.sweep_min_s:
            run.skip(f"budget sweep {tokens}", "time budget")
            continue
        try:
            mlm, rm, hf_model, _ = build_scorer(args.sweep_shape, tokenizer, max_length, str(tokens), plain=False)
        except Exception as error:  # noqa: BLE001
            run.error(f"building {args.sweep_shape} for the sweep", error)
            return
        for row in score_point(run, sweep_args, peak, args.sweep_shape, spec, mlm, rm, hf_model, tokens,
                               ["tinyrm-packed"], pairs, lengths):
            run.document["sweep"].append(row)
            _ratios(run.document["scoring"], run.document["sweep"])
            run.save()
        del rm, mlm, hf_model
        speedlib.free_memory()


# ----------------------------------------------------------------------------- training
def training_section(run: speedlib.BudgetRun, args, peak: dict, tokenizer) -> None:
    from tinyrm.data import PreferencePair
    from tinyrm.tools.synthetic import write_jsonl
    from tinyrm.train import TrainConfig, train

    steps = args.train_warmup + args.train_steps
    with tempfile.TemporaryDirectory(prefix="tinyrm-gpu-") as tmp:
        try:
            model_dir = Path(tmp) / "model"
            with torch.device(speedlib.device()):
                mlm = speedlib.random_modernbert(args.train_shape, tokenizer,
                                                 max_positions=max(8192, args.train_length))
            mlm.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
            del mlm
            speedlib.free_memory()
            raw = speedlib.alternate_length_cue(speedlib.synthetic_pairs(
                steps * args.train_pairs_per_step, args.train_length, spread=args.train_spread, seed=7))
            data = write_jsonl([PreferencePair(prompt=p, chosen=a, rejected=b) for p, a, b in raw],
                               Path(tmp) / "train.jsonl")
            lengths = [min(args.train_length, len(tokenizer(f"{p} {a} {b}")["input_ids"]) + 24) for p, a, b in raw]
        except Exception as error:  # noqa: BLE001
            run.error("training setup", error)
            return
        for attention in args.train_attention:
            what = f"training {args.train_shape} DoRA r{args.dora_rank} freeze {args.freeze_layers} {attention}"
            if run.left() < args.train_min_s:
                run.skip(what, "time budget")
                continue
            try:
                micro = 2 * args.train_pairs_per_step  # both orders of every pair in the micro-batch
                extra = {"attention": attention} if speedlib.packed_training_available() else {}
                config = TrainConfig(
                    model=str(model_dir), data=[str(data)], output=str(Path(tmp) / f"out-{attention}"),
                    objective="cloze", read="mask", max_length=args.train_length, micro_batch_size=micro,
                    batch_size=micro, max_steps=steps, save_steps=0, lr=2e-5, warmup_ratio=0.0,
                    dora_rank=args.dora_rank, freeze_layers=args.freeze_layers, precision=args.train_precision,
                    **extra)
                with profiled_steps(speedlib.device().type == "cuda", args.profile_top) as profiled:
                    result = train(config)
                for found in profiled:  # steps 1-2: inside the warm-up, so out of the timing (--train-warmup >= 3)
                    run.document.setdefault("profile", []).append({
                        "shape": args.train_shape, "point": str(args.train_length), "compiled": False,
                        "training": attention, "sequences": micro, **found})
                per_step_pairs = result.pairs / max(result.steps, 1)
                rate, per_step = speedlib.steady_rate(Path(config.output) / "metrics.jsonl", args.train_warmup,
                                                      per_step_pairs)
                if rate is None:
                    raise RuntimeError(f"no steady steps to time ({result.steps} steps, warm-up {args.train_warmup})")
                layers = speedlib.SHAPES[args.train_shape]["num_hidden_layers"]
                flops = speedlib.train_flops_per_pair(args.train_shape, tokenizer, lengths,
                                                      (layers - args.freeze_layers) / layers)
                row = {"shape": args.train_shape, "attention": attention, "dora_rank": args.dora_rank,
                       "freeze_layers": args.freeze_layers, "length": args.train_length,
                       "pairs_per_step": per_step_pairs, "steps": result.steps, "pairs_per_s": rate,
                       "seconds_per_step": per_step, "run_pairs_per_s": result.pairs_per_second,
                       "trainable_parameters": result.trainable_parameters,
                       "total_parameters": result.total_parameters, "precision": args.train_precision,
                       "approx_mfu_bf16": rate * flops / peak["bf16"]}
                run.document["training"].append(row)
                run.save()
                print(f"  {what}: {rate:.1f} pairs/s steady", file=sys.stderr)
            except Exception as error:  # noqa: BLE001
                run.error(what, error)
            speedlib.free_memory()


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
    p.add_argument("--warmup-pairs", type=int, default=512, help="untimed warm-up (and rate estimate) before each")
    p.add_argument("--point-s", type=float, default=30.0, help="cut a measurement to ~this many seconds")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="measured in this order")
    p.add_argument("--host-workers", nargs="+", type=int, default=[0, 8],
                   help="host-only rows, one per value: the pipeline's worker threads (0 = the engine's auto)")
    p.add_argument("--hf-batch", type=int, default=32, help="sequences per forward pass of the plain loop")
    p.add_argument("--max-batch-tokens", default="auto",
                   help="tinyrm's token budget per pass: auto (from the free GPU memory) or N")
    p.add_argument("--profile-shapes", nargs="*", default=["base"], choices=list(speedlib.SHAPES),
                   help="shapes whose packed forward is profiled after their scoring rows (none: no profile)")
    p.add_argument("--profile-pairs", type=int, default=64, help="pairs (both orders) in the profiled batch")
    p.add_argument("--profile-passes", type=int, default=3)
    p.add_argument("--profile-top", type=int, default=15, help="ops and kernels kept per profile")
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
            speedlib.parse_point(spec)
        except ValueError as error:
            p.error(str(error))
    if args.max_batch_tokens != "auto" and not (args.max_batch_tokens.isdigit() and int(args.max_batch_tokens) > 0):
        p.error(f"--max-batch-tokens is auto or a positive integer, got {args.max_batch_tokens!r}")
    packed_ok = speedlib.packed_training_available()
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
    run = speedlib.BudgetRun(args.budget_s, output)
    try:
        info = speedlib.machine_info()
        for name in ("peft", "accelerate", "flash_attn"):
            spec = importlib.util.find_spec(name)
            info[name] = getattr(__import__(name), "__version__", "?") if spec else None
        info["tokenizers_parallelism"] = os.environ.get("TOKENIZERS_PARALLELISM")
        run.document.update(machine=info, config=dict(vars(args)))
        if not speedlib.packed_training_available():
            run.document["notes"].append("packed training not available in this tinyrm: training rows are padded only")
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 peak = real fp32
        peak = {"bf16": speedlib.matmul_peak(torch.bfloat16, 512 if args.smoke else None),
                "fp32": speedlib.matmul_peak(torch.float32, 512 if args.smoke else None)}
        run.document["peak_flops"] = peak
        run.save()
        print(f"{info['device']}: matmul peak bf16 {peak['bf16'] / 1e12:.1f} TFLOP/s, fp32 {peak['fp32'] / 1e12:.1f} "
              f"TFLOP/s", file=sys.stderr)
        tokenizer = speedlib.synthetic_tokenizer()
        # Grad mode per section as a context, so main() called in-process (tests) leaves it as it was.
        with torch.no_grad():
            scoring_section(run, args, peak, tokenizer)
        if args.training:
            with torch.enable_grad():
                training_section(run, args, peak, tokenizer)
        with torch.no_grad():
            sweep_section(run, args, peak, tokenizer)
    except Exception as error:  # noqa: BLE001 - outside a section: still recorded, still a failure
        run.error("gpu_path", error)
    run.save()
    report(run, output)
    failed = run.document["errors"] or (args.smoke and run.document["skipped"])
    if failed:
        print(f"FAILED: {len(run.document['errors'])} error(s), {len(run.document['skipped'])} skipped "
              f"section(s); see {output}", file=sys.stderr)
    return 1 if failed else 0


def report(run: speedlib.BudgetRun, output: str) -> None:
    doc = run.document
    peak = doc.get("peak_flops", {}).get("bf16", 0.0)
    print(f"\n{doc.get('machine', {}).get('device')}, matmul peak bf16 {peak / 1e12:.1f} TFLOP/s; attention "
          f"{json.dumps(doc.get('attention', {}))}\n")
    scoring = [("shape", "shape", ""), ("point", "L", ""), ("method", "method", ""), ("pairs", "pairs", "d"),
               ("tokens_per_sequence", "tokens/seq", ".0f"), ("max_batch_tokens", "tokens/pass", "d"),
               ("pairs_per_s", "pairs/s", ".1f"), ("tokens_per_s", "tokens/s", ".0f"),
               ("speedup_vs_hf", "x hf-padded", ".2f"), ("host_vs_packed", "host / packed", ".2f"),
               ("host_workers", "host threads", "d"), ("mfu_bf16", "MFU bf16", ".1%"), ("peak_mib", "peak MiB", ".0f"),
               ("speedup_vs_packed", "x packed", ".2f"), ("warmup_s", "warm-up s", ".1f")]
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
            ("approx_mfu_bf16", "approx MFU bf16", ".1%"), ("trainable_parameters", "trainable", ",d")]))
    for prof in doc.get("profile", []):
        if prof.get("training"):
            wall = prof.get("wall_ms_per_pass")
            busy = (f" of {wall:.1f} ms wall ({prof['ms_per_pass'] / wall:.0%} busy)"
                    if wall and prof["clock"] == "device" else "")  # on the CPU the two are the same clock
            print(f"\nprofile training {prof['shape']} L={prof['point']} {prof['training']}: {prof['sequences']} "
                  f"sequences per step, {prof['ms_per_pass']:.1f} ms {prof['clock']} time per optimizer step{busy}")
        else:
            print(f"\nprofile {prof['shape']} {prof['point']} {'compiled' if prof['compiled'] else 'eager'}: "
                  f"{prof['sequences']} sequences, {prof['tokens']} tokens, {prof['ms_per_pass']:.1f} ms per pass "
                  f"({prof['clock']} time)")
        print(speedlib.markdown_table(prof["top"], [("name", "op / kernel", ""), ("calls", "calls", "d"),
                                                    ("ms_per_pass", "ms / pass", ".2f"), ("share", "share", ".1%")]))
    if doc["sweep"]:
        print()
        print(speedlib.markdown_table(doc["sweep"], [*scoring[:4], *scoring[5:7], ("vs_auto_budget", "x auto budget",
                                                                                   ".2f"), *scoring[11:13]]))
    for item in doc["notes"] + doc["skipped"] + [{k: e[k] for k in ("what", "error")} for e in doc["errors"]]:
        print(f"note: {item}")
    print(f"elapsed {time.monotonic() - run.start:.0f}s; wrote {output}")


if __name__ == "__main__":
    raise SystemExit(main())
