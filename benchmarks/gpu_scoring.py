"""Section 2 of ``gpu_path.py``, scoring, and section 4, the token-budget sweep: each method's pairs/s and MFU
at each point, the host-only rows and their split, the packed forward's profile (``gpu_path.py``'s docstring
says what each measures)."""

from __future__ import annotations

import copy
import sys
import time

import gpu_lib
import speedlib
import torch

# The run's order (Scoring): each cell's tinyrm-packed and tinyrm-padded first (a target and the "auto picks packed"
# decision), host-only next, training, then the optional rows: a run short of time loses those, not a target's row.
METHODS = ("tinyrm-packed", "tinyrm-padded", "host-only", "tinyrm-packed-compiled", "hf-padded")
ATTENTION = {"tinyrm-padded": "padded", "tinyrm-packed": "packed", "tinyrm-packed-compiled": "packed",
             "host-only": "packed"}
COMPILED = ("tinyrm-packed-compiled",)
PACKED = ("tinyrm-packed", *COMPILED)  # the GPU rates the host-only row is held against (the faster one)
SPLIT_PAIRS = 4096  # pairs of the serial host split after a point's first host-only row
REFERENCE = ("hf-padded", "tinyrm-padded")  # timed on --ref-pairs after --ref-warmup-pairs: the slow baselines


def build_scorer(shape: str, tokenizer, max_length: int, budget: str, plain: bool = True, chunk_pairs: int = 0):
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
    if chunk_pairs:
        rm.engine.config.chunk_pairs = chunk_pairs
    tokens = default_batch_tokens(dev, mlm, max_length=max_length) if budget == "auto" else int(budget)
    rm.engine.config.max_batch_tokens = tokens
    hf_model = copy.deepcopy(mlm).to(torch.bfloat16).eval() if plain else None
    try:
        if hf_model is not None:
            hf_model.set_attn_implementation("sdpa")
    except (AttributeError, ImportError, ValueError):
        pass
    return mlm, rm, hf_model, tokens


def expected_s(args, method: str) -> float:
    """What a row is budgeted before it starts: its timing (cut to ~--point-s), its warm-up and bookkeeping
    (--row-overhead-s) and, for the compiled method, a compile (--compile-s)."""
    return args.point_s + args.row_overhead_s + (args.compile_s if method in COMPILED else 0.0)


def fits(run: gpu_lib.BudgetRun, what: str, need_s: float) -> bool:
    """Whether ``need_s`` seconds are left; else the row is recorded as skipped for time."""
    if run.left() < need_s:
        run.skip(what, f"time budget ({run.left():.0f} s left, {need_s:.0f} s needed)")
        return False
    return True


def warmup_pairs(args, method: str, rm) -> int:
    """Untimed warm-up pairs: short for the padded baselines; else --warmup-pairs, or (0) two of the engine's
    pipeline chunks, so the host pipeline runs in the warm-up as in the timing (it starts above one chunk)."""
    if method in REFERENCE:
        return args.ref_warmup_pairs
    return args.warmup_pairs or 2 * rm.engine.config.chunk_pairs


def measure(run: gpu_lib.BudgetRun, args, what: str, method: str, rm, hf_model, pairs, target: int,
            reserve: float) -> tuple | None:
    """Warm up, then time ``method`` on up to ``target`` pairs, cut to ~--point-s at the warm-up's rate and to the
    time left above ``reserve``: (Timing, pairs timed, capped (fewer than ``target``), seconds of the first
    warm-up calls: the bf16 copy, a compile; graphs compiled during the timing: 0 unless a new batch shape
    recompiled; warm-up pairs; whether the host pipeline ran), or None when no time is left after the warm-up.
    Raises what the method raises."""
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
    warm_n = min(warmup_pairs(args, method, rm), len(pairs))
    warm = speedlib.timed(fn, pairs[:warm_n])  # more warm-up (allocator, pipeline), and the rate estimate
    rate = warm_n / max(warm.seconds, 1e-9)
    n = min(target, len(pairs), max(warm_n, int(rate * args.point_s)))
    n = min(n, int(rate * (run.left() - reserve)))  # the warm-up (a compile) may have run long: keep the reserve
    if n < min(target, warm_n, 64):
        run.skip(what, f"time budget after the warm-up ({run.left():.0f} s left, {reserve:.0f} s reserved)")
        return None
    graphs = _graphs()
    pipelined = method != "hf-padded" and rm.engine.overlap_enabled(n)
    timing = speedlib.timed(fn, pairs[:n])
    return timing, n, n < target, first_s, _graphs() - graphs, warm_n, pipelined


def _graphs() -> int:
    """torch.compile's graphs made so far in this process (dynamo's counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def score_row(run: gpu_lib.BudgetRun, args, peak: dict, what: str, shape: str, spec: str, scorer: tuple, method: str,
              workers: int | None, pairs, lengths: gpu_lib.EncodedLengths, target: int, reserve: float) -> dict | None:
    """One row (a dict) of ``method`` at one point, or None (skipped, or failed: recorded). Everything in it,
    the figures after the timing too, under its own try: a failure loses this row only."""
    from tinyrm.inference.pipeline import host_workers

    mlm, rm, hf_model, tokens = scorer
    try:
        if workers is not None:  # the host pipeline (on, as on a GPU, also on the CPU), with its threads (0: auto)
            rm.engine.config.host_workers, rm.engine.config.overlap = workers, "on"
        try:
            result = measure(run, args, what, method, rm, hf_model, pairs, target, reserve)
        finally:
            rm.engine.config.host_workers, rm.engine.config.overlap, rm.engine.config.compile = 0, "auto", False
        if result is None:
            return None
        timing, n, capped, first_s, recompiled, warm_n, pipelined = result
        seen = lengths.first(rm, n)
        flops = speedlib.forward_flops(mlm, seen)
        row = {"shape": shape, "point": spec, "method": method, "attention": ATTENTION.get(method, "sdpa"),
               "max_batch_tokens": None if method == "hf-padded" else tokens, "pairs": n, "capped": capped,
               "target_pairs": target, "warmup_pairs": warm_n, "pipelined": pipelined,
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
        return row
    except Exception as error:  # noqa: BLE001 - e.g. out of memory: record, go on with the next row
        run.error(what, error)
        speedlib.free_memory()
        return None


def _host_split(run: gpu_lib.BudgetRun, what: str, rm, pairs) -> dict | None:
    """``gpu_lib.host_split`` (where the host's time goes: the tokenizer, or Python under the GIL), or None."""
    try:
        return gpu_lib.host_split(rm, pairs)
    except Exception as error:  # noqa: BLE001 - record, go on
        run.error(f"{what} host split", error)
        return None


class Scoring:
    """Section 2 in the order issue 26 needs it, in two parts around training (each shape's models built at its
    first row and held until ``close``): ``core`` (before training, under its reserve): every cell's tinyrm-packed,
    each followed by the same cell's tinyrm-padded, then host-only at --host-workers' first value (0: the engine's
    auto); ``rest`` (after training): compiled, host-only at the other thread counts, hf-padded, the profiles.
    Every row checks that its expected time (``expected_s``) is left above the reserve before it starts."""

    def __init__(self, run: gpu_lib.BudgetRun, args, peak: dict, tokenizer) -> None:
        self.run, self.args, self.peak, self.tokenizer = run, args, peak, tokenizer
        self.max_length = max(gpu_lib.parse_point(spec)[1] for spec in args.points)
        self.pairs = {spec: gpu_lib.point_pairs(max(args.pairs_n, args.ref_pairs), spec, seed=k)
                      for k, spec in enumerate(args.points)}
        self.lengths = {spec: gpu_lib.EncodedLengths(self.pairs[spec]) for spec in args.points}
        self.built: dict[str, tuple | None] = {}  # shape -> (mlm, rm, hf_model, tokens), or None: its build failed
        self.cells = [(shape, spec) for shape in args.shapes for spec in args.points]

    def core(self, reserve: float) -> None:
        for shape, spec in self.cells:
            for method in ("tinyrm-packed", "tinyrm-padded"):
                self.row(shape, spec, method, None, reserve)
        for shape, spec in self.cells:
            self.row(shape, spec, "host-only", self.args.host_workers[0], reserve)
        speedlib.free_memory()  # the allocator's cached blocks, before training

    def rest(self) -> None:
        plan = [("tinyrm-packed-compiled", None), *(("host-only", w) for w in self.args.host_workers[1:]),
                ("hf-padded", None)]
        for method, workers in plan:
            for shape, spec in self.cells:
                self.row(shape, spec, method, workers, 0.0)
        spec = self.args.points[0]
        for shape in self.args.profile_shapes:
            if self.built.get(shape):
                profile_packed(self.run, self.args, shape, spec, self.built[shape][1], self.pairs[spec],
                               self.built[shape][3])

    def close(self) -> None:
        self.built.clear()
        speedlib.free_memory()

    def row(self, shape: str, spec: str, method: str, workers: int | None, reserve: float) -> None:
        if method not in self.args.methods:
            return
        what = f"scoring {shape} {spec} {method}" + (f" host_workers={workers or 'auto'}" if workers is not None
                                                     else "")
        if not fits(self.run, what, reserve + expected_s(self.args, method)) or not self.scorer(shape):
            return
        target = self.args.ref_pairs if method in REFERENCE else self.args.pairs_n
        row = score_row(self.run, self.args, self.peak, what, shape, spec, self.built[shape], method, workers,
                        self.pairs[spec], self.lengths[spec], target, reserve)
        if row is not None:
            self.run.document["scoring"].append(row)
            _ratios(self.run.document["scoring"], self.run.document["sweep"])
            self.run.save()

    def scorer(self, shape: str) -> tuple | None:
        """The shape's models, built at its first row (a failed build is recorded once; its rows are lost)."""
        if shape not in self.built:
            self.built[shape] = None
            try:
                mlm, rm, hf_model, tokens = build_scorer(shape, self.tokenizer, self.max_length,
                                                         self.args.max_batch_tokens, chunk_pairs=self.args.chunk_pairs)
                rm.engine.config.attention = "packed"
                self.run.document.setdefault("attention", {})[shape] = {
                    "hf-padded": getattr(hf_model.config, "_attn_implementation", "?"), "max_batch_tokens": tokens,
                    "chunk_pairs": rm.engine.config.chunk_pairs, "packed_runs": rm.engine.uses_packed(),
                    "varlen": gpu_lib.varlen_info(rm.device)}
                self.built[shape] = (mlm, rm, hf_model, tokens)
            except Exception as error:  # noqa: BLE001 - record; the other shape still runs
                self.run.error(f"building {shape}", error)
        return self.built[shape]


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
    if not fits(run, what, args.row_overhead_s + args.compile_s):  # after training: a few passes, maybe a compile
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
    for tokens in args.sweep_tokens:
        # Last, first to go: its own floor (--sweep-min-s) or the row's expected time, no training reserve.
        what = f"budget sweep {args.sweep_shape} {spec} {tokens} tokens/pass"
        if not fits(run, what, max(args.sweep_min_s, expected_s(args, "tinyrm-packed"))):
            continue
        try:
            scorer = build_scorer(args.sweep_shape, tokenizer, max_length, str(tokens), plain=False,
                                  chunk_pairs=args.chunk_pairs)
        except Exception as error:  # noqa: BLE001
            run.error(f"building {args.sweep_shape} for the sweep", error)
            return
        row = score_row(run, args, peak, what, args.sweep_shape, spec, scorer, "tinyrm-packed", None, pairs, lengths,
                        args.sweep_pairs, 0.0)
        if row is not None:
            run.document["sweep"].append(row)
            _ratios(run.document["scoring"], run.document["sweep"])
            run.save()
        del scorer
        speedlib.free_memory()
