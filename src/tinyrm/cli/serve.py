"""Test-time subcommands: ``tinyrm rank`` (best-of-n over a JSONL file) and ``tinyrm serve`` (HTTP)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..data import DataError, jsonl_lines, parse_json_line
from ..errors import UsageError
from .calibrate import add_calibration_argument
from .scoring import add_attention_argument


@dataclass
class RankRow:
    line: int
    row: dict
    prompt: str
    candidates: list[str]


def parse_rank_row(raw: str | bytes) -> tuple[dict, str, list[str]]:
    """Decode one ``{"prompt", "candidates": [...]}`` line; ``ValueError`` with the reason."""
    row = parse_json_line(raw)
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError("missing field 'prompt'" if prompt is None else "field 'prompt' must be a string")
    candidates = row.get("candidates")
    if not isinstance(candidates, list):
        raise ValueError("missing field 'candidates'" if candidates is None else "field 'candidates' must be a list")
    if not candidates:
        raise ValueError("field 'candidates' is empty")
    for i, c in enumerate(candidates):
        if not isinstance(c, str):
            raise ValueError(f"candidates[{i}] must be a string, got {type(c).__name__}")
    return row, prompt, candidates


def read_rank_rows(path: str | Path, skip_bad_rows: bool = False) -> tuple[list[RankRow], int]:
    """All rows of a rank input file, validated up front so a bad line fails before any model time."""
    path = Path(path)
    rows, skipped = [], 0
    for number, _, raw in jsonl_lines(path):
        try:
            row, prompt, candidates = parse_rank_row(raw)
        except ValueError as error:
            if not skip_bad_rows:
                raise DataError(f"{path}:{number}: {error}") from None
            skipped += 1
            continue
        rows.append(RankRow(number, row, prompt, candidates))
    return rows, skipped


def cmd_rank(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..auto import load
    from ..inference.packed import apply_attention
    from ..outputs import check_output, replacing
    from ..pairwise.rank import rank_candidates
    from ..temperature import use_calibration

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_output("--output", args.output, [args.input])  # before the rows are read and the model loads
    rows, skipped = read_rank_rows(args.input, args.skip_bad_rows)
    rm = use_calibration(apply_attention(load(args.model), args.attention),  # --no-calibration: raw P
                         getattr(args, "calibrated", True))
    output = Path(args.output)
    comparisons = 0
    # Into a temporary file that replaces --output only when every row is ranked: an error or Ctrl-C midway
    # leaves --output as it was, never a shorter file of valid rows that looks complete.
    with replacing(output) as tmp, tmp.open("w", encoding="utf-8") as out:
        for row in tqdm(rows, desc=f"rank ({args.method})", unit="row"):
            result = rank_candidates(rm, row.prompt, row.candidates, method=args.method, batch_size=args.batch_size)
            comparisons += result.comparisons
            out.write(json.dumps({**row.row, "ranking": result.ranking, "scores": result.scores}) + "\n")
    if args.json:
        from .output import emit_json

        emit_json({"rows": len(rows), "skipped_rows": skipped, "comparisons": comparisons, "method": args.method,
                   "model": rm.name, "output": str(output)})
        return 0
    note = f", skipped {skipped} bad rows" if skipped else ""
    how = (f"{comparisons} comparisons, both orders each" if comparisons or not rows
           else "each candidate scored once: a reward per response needs no tournament")
    print(f"ranked {len(rows)} rows ({how}){note}; wrote {output}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..auto import load
    from ..serving.app import ServeConfig, serve

    config = ServeConfig(host=args.host, port=args.port, api_key=args.api_key, max_batch_size=args.max_batch_size,
                         max_wait_ms=args.max_wait_ms, max_request_bytes=args.max_request_bytes,
                         max_candidates=args.max_candidates, max_items=args.max_items,
                         max_documents=args.max_documents, log_level=args.log_level,
                         forward_batch_size=args.forward_batch_size, threads=args.threads,
                         graceful_timeout_s=args.graceful_timeout, request_timeout_s=args.request_timeout,
                         max_queued_pairs=args.max_queued_pairs, slice_pairs=args.slice_pairs,
                         engine=args.engine, replicas=args.replicas,
                         gpus_per_replica=args.gpus_per_replica, ray_address=args.ray_address,
                         calibrated=getattr(args, "calibrated", True))
    if config.engine == "ray":  # each replica loads the model itself
        from ..serving.ray_serve import serve_on_ray

        if args.attention is not None:
            raise UsageError("--attention applies to --engine local (Ray replicas score with attention auto)")
        return serve_on_ray(args.model, config)
    from ..inference.packed import apply_attention

    rm = apply_attention(load(args.model), args.attention)  # a runtime choice: rm.engine.config.attention
    print(f"tinyrm serve: {rm.name} on {getattr(rm, 'device', 'cpu')}; http://{args.host}:{args.port} "
          f"(docs at /docs){'; API key required' if args.api_key else ''}", flush=True)
    serve(rm, config)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("rank", help="best-of-n ranking of candidate answers from a JSONL file")
    p.add_argument("--model", default="default", metavar="DIR")
    p.add_argument("--input", required=True, metavar="FILE.jsonl", help='rows {"prompt", "candidates": [...]}')
    p.add_argument("--output", required=True, metavar="FILE.jsonl",
                   help='input rows plus "ranking" (indices, best first) and "scores" (per candidate)')
    p.add_argument("--method", default="knockout", choices=["knockout", "round_robin"])
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--skip-bad-rows", action="store_true")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary (rows, skipped_rows, comparisons, method, model, output) on stdout")
    add_attention_argument(p)
    add_calibration_argument(p)
    p.set_defaults(handler=cmd_rank)

    from ..serving.app import ServeConfig

    d = ServeConfig()
    p = subparsers.add_parser("serve", help="HTTP scoring service (FastAPI + uvicorn, micro-batched)")
    p.add_argument("--model", default="default", metavar="DIR")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--api-key", default=os.environ.get("TINYRM_API_KEY", d.api_key), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/* and /v2/* (default: $TINYRM_API_KEY)")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                   help="pairs (or step units) merged per forward call (default: 16 on CPU, 64 on GPU)")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="how long a request waits for company")
    p.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes, help="larger bodies get 413")
    p.add_argument("--max-candidates", type=int, default=d.max_candidates, help="/v1/rank limit (422 beyond)")
    p.add_argument("--max-items", type=int, default=d.max_items, help="/v1/compare_batch limit (422 beyond)")
    p.add_argument("--max-documents", type=int, default=d.max_documents,
                   help="/v1/rerank and /v2/rerank limit (422 beyond): n documents cost n(n - 1) sequences")
    p.add_argument("--forward-batch-size", type=int, default=None,
                   help="sequences per forward pass (default: 8 on CPU, 2 x --max-batch-size on GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--graceful-timeout", type=float, default=d.graceful_timeout_s, metavar="S",
                   help="on SIGTERM: stop accepting, give accepted requests S seconds to finish, then exit")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s, metavar="S",
                   help="each scoring request's deadline (a client may ask for less with X-Request-Timeout); "
                        "past it: 503 with Retry-After, remaining work dropped")
    p.add_argument("--max-queued-pairs", type=int, default=d.max_queued_pairs, metavar="N",
                   help="pairs accepted and not yet answered; a request that would pass it gets 503 at once "
                        "(at least --max-items)")
    p.add_argument("--slice-pairs", type=int, default=d.slice_pairs, metavar="N",
                   help="pairs per slice of a request; forward calls take slices round-robin across requests "
                        "(default: a quarter of --max-batch-size: 4 on CPU, 16 on GPU)")
    p.add_argument("--engine", default=d.engine, choices=["local", "ray"],
                   help="local: this process (uvicorn); ray: Ray Serve replicas behind one address (tinyrm[ray])")
    p.add_argument("--replicas", type=int, default=d.replicas, metavar="N",
                   help="--engine ray: replicas, one model each")
    p.add_argument("--gpus-per-replica", type=float, default=d.gpus_per_replica, metavar="G",
                   help="--engine ray: GPUs per replica (default 0: CPU replicas)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="--engine ray: an existing Ray cluster ('auto': the one `ray start` left here; default: "
                        "$RAY_ADDRESS, else a new local Ray, stopped on exit)")
    add_attention_argument(p)
    add_calibration_argument(p)
    p.set_defaults(handler=cmd_serve)
