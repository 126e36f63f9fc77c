"""``ScoreConfig``: every option of a scoring job (``tinyrm score`` flags map onto it), and
``ScoreResult``, what a finished job reports (also written to ``OUT.summary.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UsageError

ENGINES = ("local", "ray")
METHODS = ("knockout", "round_robin")  # how a candidate set is ranked (tinyrm.pairwise.rank)
FORMATS = ("parquet", "jsonl")
DEFAULT_CHUNK_ROWS = 1024
DEFAULT_RETRIES = 2
SHOWN_SKIPPED = 100  # skipped-row locations kept per chunk and in the summary (the count is whole)


@dataclass
class ScoreConfig:
    model: str = "default"
    data: list[str] = field(default_factory=list)  # JSONL / Parquet files, globs, hub:NAME[:SPLIT]
    output: str = ""  # Parquet, or JSONL when it ends in .jsonl; resume state in OUT.parts/
    engine: str = "local"  # local | ray
    num_workers: int = 1  # --engine ray: actors, one model each
    gpus_per_worker: float = 0.0  # --engine ray: GPUs each actor reserves (0: CPU)
    cpus_per_worker: float = 1.0  # --engine ray: CPUs each actor reserves
    ray_address: str | None = None  # --engine ray: an existing cluster (else $RAY_ADDRESS, else a local Ray)
    batch_size: int = 32  # sequences per forward pass (compare_batch's batch_size)
    min_prob: float | None = None  # keep the chosen/rejected pairs whose prob_chosen >= min_prob
    keep_best: bool = False  # candidate sets: replace `candidates` by its best candidate (`best`, `best_index`)
    method: str = "knockout"  # candidate sets: knockout | round_robin
    skip_bad_rows: bool = False
    chunk_rows: int = DEFAULT_CHUNK_ROWS  # input rows per resumable piece (one part file each)
    precision: str | None = None  # auto | bf16 | fp32 | int8 (tinyrm.inference.precision)
    attention: str | None = None  # auto | packed | padded (tinyrm.inference.packed): how, not what, it computes
    device: str | None = None  # local engine: cpu | cuda[:N] (default: cuda when available)
    retries: int = DEFAULT_RETRIES  # times a chunk that raised (not a bad row) is scored again before the job stops
    progress: bool = True  # a progress bar on stderr (rows, rows/s)
    calibrated: bool = True  # False: raw probabilities even where tinyrm.json holds a temperature (tinyrm calibrate)


@dataclass
class ScoreResult:
    output: str
    summary_path: str
    model: str
    engine: str
    rows: int  # input rows read (bad rows included)
    pairs: int  # chosen/rejected rows
    ab_pairs: int  # a/b rows
    candidate_sets: int
    bad_rows: int  # skipped with skip_bad_rows
    kept_rows: int  # rows written to the output
    dropped_rows: int  # pairs removed by min_prob
    candidates_kept: int  # keep_best: one per set
    candidates_dropped: int  # keep_best: the others
    chunks: int
    resumed_chunks: int  # chunks found done in OUT.parts/ when the run started
    seconds: float
    rows_per_second: float  # rows scored by this run (not the resumed ones) per second
    min_prob: float | None = None
    keep_best: bool = False
    skipped_rows: list[list[str]] = field(default_factory=list)  # [location, reason], the first 100

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def output_format(output: str) -> str:
    """``jsonl`` for a path ending in ``.jsonl``, else ``parquet``."""
    return "jsonl" if str(output).lower().endswith(".jsonl") else "parquet"


def check_config(config: ScoreConfig) -> ScoreConfig:
    """``UsageError`` for a value no run could use; ``data`` given as one string becomes a list."""
    if isinstance(config.data, str):
        config.data = [config.data]
    if not config.data:
        raise UsageError("no data given (pass --data FILE...)")
    if not config.output:
        raise UsageError("no output given (pass --output OUT.parquet or OUT.jsonl)")
    if config.engine not in ENGINES:
        raise UsageError(f"--engine must be one of {list(ENGINES)}, got {config.engine!r}")
    if config.method not in METHODS:
        raise UsageError(f"--method must be one of {list(METHODS)}, got {config.method!r}")
    for name in ("batch_size", "chunk_rows", "num_workers"):
        if getattr(config, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if config.gpus_per_worker < 0 or config.cpus_per_worker < 0:
        raise UsageError("--gpus-per-worker and --cpus-per-worker must be >= 0")
    if config.retries < 0:
        raise UsageError(f"retries must be >= 0, got {config.retries}")
    if config.min_prob is not None and not 0.0 <= config.min_prob <= 1.0:
        raise UsageError(f"--min-prob must be in [0, 1], got {config.min_prob}")
    if config.engine == "local" and (config.num_workers != 1 or config.gpus_per_worker or config.ray_address):
        raise UsageError("--num-workers, --gpus-per-worker and --ray-address apply to --engine ray")
    from ..inference.packed import ATTENTIONS

    if config.attention is not None and config.attention not in ATTENTIONS:
        raise UsageError(f"--attention must be one of {list(ATTENTIONS)}, got {config.attention!r}")
    if config.engine == "ray" and config.device:
        raise UsageError("--device applies to --engine local (Ray places each worker: --gpus-per-worker)")
    return config
