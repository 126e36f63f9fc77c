"""Section 2 of ``gpu_path.py``, scoring, and section 4, the token-budget sweep: each method's pairs/s and MFU
at each point, the host-only rows and their split, the packed forward's profile (``gpu_path.py``'s docstring
says what each measures)."""

from __future__ import annotations

import argparse
import copy
import sys
import time

import gpu_lib
import speedlib
import torch

# Measured in this order at each point: the rows issue 26's targets read first, so a run short of time loses
# the baselines before them.
METHODS = ("tinyrm-packed", "tinyrm-packed-compiled", "host-only", "tinyrm-padded", "hf-padded")
ATTENTION = {"tinyrm-padded": "padded", "tinyrm-packed": "packed", "tinyrm-packed-compiled": "packed",
             "host-only": "packed"}
COMPILED = ("tinyrm-packed-compiled",)
PACKED = ("tinyrm-packed", *COMPILED)  # the GPU rates the host-only row is held against (the faster one)
SPLIT_PAIRS = 4096  # pairs of the serial host split after a point's first host-only row
REFERENCE = ("hf-padded", "tinyrm-padded")  # timed on --ref-pairs: the baselines, slow at 512 tokens


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


def measure(run: gpu_lib.BudgetRun, args, what: str, method: str, rm, hf_model, pairs, target: int) -> tuple | None:
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
                return gpu_lib.hf_padded(hf_model, rm, items, args.hf_batch)
            if method == "host-only":
                with gpu_lib.forward_removed(rm.engine):
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


def score_point(run: gpu_lib.BudgetRun, args, peak: dict, shape: str, spec: str, mlm, rm, hf_model, tokens: int,
                methods, pairs, lengths: gpu_lib.EncodedLengths):
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


def _host_split(run: gpu_lib.BudgetRun, what: str, rm, pairs) -> dict | None:
    """``gpu_lib.host_split`` (where the host's time goes: the tokenizer, or Python under the GIL), or None."""
    try:
        return gpu_lib.host_split(rm, pairs)
    except Exception as error:  # noqa: BLE001 - record, go on
        run.error(f"{what} host split", error)
        return None


def scoring_section(run: gpu_lib.BudgetRun, args, peak: dict, tokenizer) -> None:
    """Every shape and point's target rows (packed, compiled, host-only) first, then the profiles, then the
    padded baselines: a run short of time loses baselines, not a target's row (the large shape's baselines
    at 512 tokens alone take about a minute)."""
    max_length = max(gpu_lib.parse_point(spec)[1] for spec in args.points)
    pairs = {spec: gpu_lib.point_pairs(max(args.pairs_n, args.ref_pairs), spec, seed=k)
             for k, spec in enumerate(args.points)}
    lengths = {spec: gpu_lib.EncodedLengths(pairs[spec]) for spec in args.points}
    built: dict[str, tuple] = {}  # shape -> (mlm, rm, hf_model, tokens), all held: a few GB of a GPU's memory
    targets = [m for m in args.methods if m not in REFERENCE]
    baselines = [m for m in args.methods if m in REFERENCE]
    for shape in args.shapes:
        if run.left() < args.reserve_s:
            run.skip(f"scoring {shape}", "time budget")
            continue
        try:
            mlm, rm, hf_model, tokens = build_scorer(shape, tokenizer, max_length, args.max_batch_tokens)
            rm.engine.config.attention = "packed"
            run.document.setdefault("attention", {})[shape] = {
                "hf-padded": getattr(hf_model.config, "_attn_implementation", "?"), "max_batch_tokens": tokens,
                "packed_runs": rm.engine.uses_packed(), "varlen": gpu_lib.varlen_info(rm.device)}
        except Exception as error:  # noqa: BLE001 - record and go on with the next shape
            run.error(f"building {shape}", error)
            continue
        built[shape] = (mlm, rm, hf_model, tokens)
        _score_points(run, args, peak, shape, built[shape], targets, pairs, lengths)
    for shape in args.profile_shapes:
        if shape in built:
            profile_packed(run, args, shape, args.points[0], built[shape][1], pairs[args.points[0]], built[shape][3])
    for shape, scorer in built.items():
        _score_points(run, args, peak, shape, scorer, baselines, pairs, lengths)
    built.clear()
    speedlib.free_memory()


def _score_points(run: gpu_lib.BudgetRun, args, peak: dict, shape: str, scorer: tuple, methods, pairs: dict,
                  lengths: dict) -> None:
    mlm, rm, hf_model, tokens = scorer
    for spec in args.points:
        for row in score_point(run, args, peak, shape, spec, mlm, rm, hf_model, tokens, methods, pairs[spec],
                               lengths[spec]):
            run.document["scoring"].append(row)
            _ratios(run.document["scoring"], run.document["sweep"])
            run.save()


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


def profile_packed(run: gpu_lib.BudgetRun, args, shape: str, spec: str, rm, pairs, budget: int) -> None:
    """Where a packed forward's time goes, eager and compiled: ``torch.profiler`` over ``--profile-passes``
    passes of one packed batch (``--profile-pairs`` pairs, both orders; 0: as many as the scoring rows' token
    ``budget`` holds, a pass as scoring runs it), the ``--profile-top`` kernels by device time (ops by CPU time
    off CUDA), so a run that misses a target also says what to fuse next. On CUDA the same passes are also
    timed unprofiled (``wall_ms_per_pass``): ``busy`` = device time / wall time, the share of a pass the GPU
    computes; the rest is launch and host time inside the forward, all that CUDA graphs could save."""
    from tinyrm.inference.varlen import pack

    what = f"profile {shape} {spec}"
    if run.left() < args.reserve_s + 15:
        run.skip(what, "time budget")
        return
    cuda = rm.device.type == "cuda"
    try:
        batch = pack(_both_orders(rm, pairs, args.profile_pairs, budget), rm.device)
        for compiled in (False, True):
            rm.engine.config.attention, rm.engine.config.compile = "packed", compiled
            # Under inference mode, as scoring runs it: outside it the compiled regions would see activations of
            # another kind of tensor and compile a second set of graphs (with autograd on, training-style ones).
            graphs = _graphs()
            with torch.inference_mode():
                forward = rm.engine.prepared().packed
                forward(batch)  # warm-up (a compile, if no earlier row made the graphs)
                speedlib.sync()
                start = time.perf_counter()
                for _ in range(args.profile_passes):
                    forward(batch)
                speedlib.sync()
                wall_ms = (time.perf_counter() - start) * 1e3 / args.profile_passes
                with gpu_lib.profiler(cuda) as prof:
                    for _ in range(args.profile_passes):
                        forward(batch)
                    speedlib.sync()
            events = gpu_lib.top_events(prof, cuda, args.profile_passes, args.profile_top, wall_ms=wall_ms)
            run.document.setdefault("profile", []).append({
                "shape": shape, "point": spec, "compiled": compiled, "sequences": batch.batch_size,
                "tokens": int(batch.cu_seqlens[-1]), "graphs_compiled": _graphs() - graphs, **events})
            run.save()
    except Exception as error:  # noqa: BLE001 - record, go on
        run.error(what, error)
    finally:
        rm.engine.config.compile = False


def _both_orders(rm, pairs, n: int, budget: int) -> list:
    """The first ``n`` pairs encoded in both orders (given order first, as scoring does), or with ``n`` 0 as many
    as fit ``budget`` tokens (at least one pair)."""
    given, swapped, tokens = [], [], 0
    for prompt, a, b in pairs[: n or None]:
        pair = rm.encode(prompt, a, b), rm.encode(prompt, b, a)
        tokens += sum(len(e.input_ids) for e in pair)
        if not n and tokens > budget and given:
            break
        given.append(pair[0])
        swapped.append(pair[1])
    return given + swapped


def sweep_section(run: gpu_lib.BudgetRun, args, peak: dict, tokenizer) -> None:
    """tinyrm-packed at one point for each fixed budget per pass (the auto budget's row is in scoring)."""
    spec = args.sweep_point
    # The scoring point's own pairs (a prefix: same seed) where it was one, so "x auto budget" compares like with like.
    pairs = gpu_lib.point_pairs(args.sweep_pairs, spec, seed=args.points.index(spec) if spec in args.points else 99)
    lengths = gpu_lib.EncodedLengths(pairs)
    max_length = max(gpu_lib.parse_point(p)[1] for p in [*args.points, spec])  # as in scoring: the same encodings
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
