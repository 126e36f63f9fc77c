"""``tinyrm score``: score and filter a dataset, in this process or on Ray (a shell over ``tinyrm.score``)."""

from __future__ import annotations

import argparse

from .output import emit_json


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    from ..inference.precision import PRECISIONS
    from ..scoring.config import ENGINES, METHODS, ScoreConfig
    from .scoring import add_attention_argument

    d = ScoreConfig()
    p.add_argument("--model", default=d.model, help="a saved tinyrm model, a hub id or 'default' (embedded)")
    p.add_argument("--data", nargs="+", required=True, metavar="IN",
                   help="JSONL / Parquet files, globs or hub:NAME[:SPLIT], in order; rows are pairs "
                        '{"prompt", "chosen", "rejected"} or {"prompt", "a", "b"}, or candidate sets '
                        '{"prompt", "candidates": [...]}, told apart per row')
    p.add_argument("--output", required=True, metavar="OUT",
                   help="Parquet, or JSONL when OUT ends in .jsonl; counts in OUT.summary.json, resume state "
                        "in OUT.parts/ while the run lasts")
    p.add_argument("--engine", default=d.engine, choices=list(ENGINES),
                   help="local: one process; ray: Ray Data, one model per actor (pip install 'tinyrm[ray]')")
    p.add_argument("--num-workers", type=int, default=d.num_workers, metavar="N", help="--engine ray: actors")
    p.add_argument("--gpus-per-worker", type=float, default=d.gpus_per_worker, metavar="G",
                   help="--engine ray: GPUs per actor (0: CPU)")
    p.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker, metavar="C",
                   help="--engine ray: CPUs per actor")
    p.add_argument("--ray-address", default=d.ray_address, metavar="ADDR",
                   help="--engine ray: an existing cluster (default: $RAY_ADDRESS, else a local Ray started here)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, metavar="B", help="sequences per forward pass")
    p.add_argument("--min-prob", type=float, default=d.min_prob, metavar="P",
                   help="keep the chosen/rejected pairs whose prob_chosen >= P (drop those the model contradicts)")
    p.add_argument("--keep-best", action="store_true",
                   help="candidate sets: replace `candidates` by its best one (`best`, `best_index`)")
    p.add_argument("--method", default=d.method, choices=list(METHODS), help="how candidate sets are ranked")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip (and count) malformed rows instead of stopping")
    p.add_argument("--chunk-rows", type=int, default=d.chunk_rows, metavar="N",
                   help="input rows per resumable piece (a killed run redoes at most one per worker)")
    p.add_argument("--precision", default=d.precision, choices=list(PRECISIONS), help="scoring precision")
    add_attention_argument(p)
    from .calibrate import add_calibration_argument

    add_calibration_argument(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the summary (OUT.summary.json) as JSON on stdout")


def cmd_score(args: argparse.Namespace) -> int:
    from ..scoring import ScoreConfig, score

    fields = ScoreConfig.__dataclass_fields__
    result = score(ScoreConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    if args.json:
        import json
        from pathlib import Path

        emit_json(json.loads(Path(result.summary_path).read_text(encoding="utf-8")))
        return 0
    resumed = f", {result.resumed_chunks} of {result.chunks} chunks resumed" if result.resumed_chunks else ""
    print(f"scored {result.rows} rows ({result.pairs} chosen/rejected pairs, {result.ab_pairs} a/b pairs, "
          f"{result.candidate_sets} candidate sets) in {result.seconds:.1f}s ({result.rows_per_second:.1f} rows/s"
          f"{resumed})")
    print(f"kept {result.kept_rows} rows, dropped {result.dropped_rows}"
          + (f" (prob_chosen < --min-prob {result.min_prob})" if result.min_prob is not None else ""))
    if result.keep_best:
        print(f"--keep-best: kept {result.candidates_kept} candidates, dropped {result.candidates_dropped}")
    if result.bad_rows:
        print(f"skipped {result.bad_rows} bad rows (listed in {result.summary_path})")
    print(f"wrote {result.output} and {result.summary_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("score", help="score a dataset of pairs / candidate sets and filter it (resumable)")
    add_score_arguments(p)
    p.set_defaults(handler=cmd_score)
