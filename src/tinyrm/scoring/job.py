"""``score(config)``: score a dataset of pairs and candidate sets, filter it, write it back.

The job: plan the input's chunks (:mod:`.readers`), open or resume ``OUT.parts/`` (:mod:`.parts`),
let the engine (:mod:`.local` or :mod:`.ray_engine`) score every unfinished chunk (:mod:`.chunk`),
join the parts into ``OUT`` (:mod:`.writers`), write ``OUT.summary.json`` and remove ``OUT.parts/``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..outputs import check_output
from ..progress import progress_bar
from .config import ScoreConfig, ScoreResult, check_config, output_format
from .parts import STATE_FORMAT, PartStore, output_lock, parts_dir
from .readers import Plan, plan_chunks, source_signature
from .writers import write_atomic


def summary_path(output: str | Path) -> Path:
    return Path(f"{output}.summary.json")


def model_signature(model: str) -> list:
    """The resolved model path and each of its files' size and mtime (a hub id: the id)."""
    from ..backbone import resolve_model_path

    path = Path(resolve_model_path(model))
    if not path.is_dir():
        return [str(model)]
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return [str(path.resolve())] + [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def compute_precision(config: ScoreConfig) -> str:
    """The precision the chunks are scored in: ``auto`` (the default) resolved on their device, so a run
    resumed on another device does not mix bf16- and fp32-scored rows."""
    precision = config.precision or "auto"
    if precision != "auto":
        return precision
    if config.engine == "ray":
        on_gpu = config.gpus_per_worker > 0
    else:
        from ..backbone import default_device

        on_gpu = str(config.device or default_device()).startswith("cuda")
    if on_gpu:  # not asked of the GPU here: a Ray driver may have none
        return "auto on cuda"
    from ..inference.precision import cpu_bf16_native

    return "bf16" if cpu_bf16_native() else "fp32"


def describe(config: ScoreConfig, plan: Plan, fmt: str) -> tuple[str, dict[str, Any]]:
    """The job's fingerprint and what it covers: what changes the output rows, not how they are computed
    (engine, workers, batch size), so a run may be resumed on another engine."""
    job = {
        "state_format": STATE_FORMAT, "model": model_signature(config.model),
        "sources": [source_signature(source) for source in plan.sources], "chunk_rows": config.chunk_rows,
        "min_prob": config.min_prob, "keep_best": config.keep_best, "method": config.method,
        "skip_bad_rows": config.skip_bad_rows, "precision": compute_precision(config), "format": fmt,
    }
    if not config.calibrated:  # raw probabilities change the output (a calibrated model's are in its files)
        job["calibrated"] = False
    text = json.dumps(job, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32], job


def _check_paths(config: ScoreConfig, plan: Plan) -> None:
    output = check_output("--output", config.output, plan.sources, hint=" (.parquet or .jsonl)")
    if any(Path(source).resolve() == parts_dir(output) for source in plan.sources):
        raise UsageError(f"--output {config.output} is one of the inputs")


def _progress(config: ScoreConfig, plan: Plan, initial: int) -> Any:
    return progress_bar(plan.rows, f"score ({config.engine})", " rows", enabled=config.progress, initial=initial)


def score(config: ScoreConfig | None = None, /, **options: Any) -> ScoreResult:
    """Score ``config.data`` with ``config.model`` and write the kept rows to ``config.output``.

    ``score(ScoreConfig(...))``, or the same fields as keywords: ``score(model=..., data=[...],
    output="out.parquet", min_prob=0.6)``. A run stopped at any point (even killed) and started
    again with the same arguments continues from ``OUT.parts/`` and writes the same output.
    """
    config = check_config(replace(config, **options) if config is not None else ScoreConfig(**options))
    fmt = output_format(config.output)
    plan = plan_chunks(config.data, config.chunk_rows)
    _check_paths(config, plan)
    fingerprint, job = describe(config, plan, fmt)
    with output_lock(config.output):
        store = PartStore.open(config.output, fmt, fingerprint, plan.chunks, job)
        resumed_rows = sum(counts["rows"] for counts in store.counts.values())
        started = time.perf_counter()
        with _progress(config, plan, resumed_rows) as bar:
            if config.engine == "ray":
                from .ray_engine import run_ray as run
            else:
                from .local import run_local as run
            run(config, plan, store, lambda counts: bar.update(counts["rows"]))
        store.finish()
        seconds = time.perf_counter() - started
        totals = store.totals()
        result = ScoreResult(
            output=str(config.output), summary_path=str(summary_path(config.output)), model=config.model,
            engine=config.engine, rows=totals.get("rows", 0), pairs=totals.get("pairs", 0),
            ab_pairs=totals.get("ab_pairs", 0), candidate_sets=totals.get("candidate_sets", 0),
            bad_rows=totals.get("bad_rows", 0), kept_rows=totals.get("kept_rows", 0),
            dropped_rows=totals.get("dropped_rows", 0), candidates_kept=totals.get("candidates_kept", 0),
            candidates_dropped=totals.get("candidates_dropped", 0), chunks=plan.chunks, resumed_chunks=store.resumed,
            seconds=round(seconds, 3), rows_per_second=round((plan.rows - resumed_rows) / max(seconds, 1e-9), 2),
            min_prob=config.min_prob, keep_best=config.keep_best, skipped_rows=totals["skipped_rows"],
        )
        summary = {**result.to_dict(), "data": plan.sources, "format": fmt, "method": config.method,
                   "chunk_rows": config.chunk_rows, "batch_size": config.batch_size}
        write_atomic(summary_path(config.output), (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
        store.remove()
    return result
