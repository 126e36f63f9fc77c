"""``--engine ray``: the same chunks scored on Ray Data, one model per actor (``pip install tinyrm[ray]``).

The pipeline is ``ray.data.from_items(units)`` (the plan: where each unfinished run of rows starts)
-> ``map_batches(ChunkScorer, compute=ActorPoolStrategy(size=num_workers), num_gpus=gpus_per_worker)``,
whose actors each load the model once, read their unit straight from the input (a JSONL byte offset,
Parquet row groups, a hub slice), score its chunks with the code ``--engine local`` runs
(:func:`tinyrm.scoring.chunk.score_chunk`) and yield each chunk's part file -> this process, which
commits each part to ``OUT.parts/`` as it arrives and joins them in chunk order at the end. So the
columns, the order and the filters are those of ``--engine local``.

Failures: a chunk whose scoring raises is scored again in its actor up to ``retries`` times (default
2), then the run stops with that error; a bad row stops it at once (or is skipped). A worker that dies
(killed, out of memory, its node lost) is restarted by Ray and its unit done again (Ray Data's actor
pool: ``max_restarts=-1``, ``max_task_retries=-1``); a chunk is committed only once its whole part has
arrived, so no row is lost or written twice. Inputs must be readable from every node (a shared file
system, or a hub dataset each node can load) and tinyrm installed on each.

Ray is started here (a local instance, stopped at the end) unless one is running already in this
process or a cluster is given (``ray_address``, else ``$RAY_ADDRESS``).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..data import DataError
from ..errors import UserError
from .chunk import score_with_retries
from .config import ScoreConfig
from .local import pending_units
from .parts import PartStore
from .readers import Plan, Unit, read_unit

if TYPE_CHECKING:
    import pyarrow as pa

# Test hook: "CHUNK:MARKER" kills (SIGKILL) the actor about to score chunk CHUNK, once (MARKER records it).
KILL_ENV = "TINYRM_SCORE_KILL_WORKER"


def _import_ray() -> ModuleType:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError("--engine ray needs Ray Data: pip install 'tinyrm[ray]'") from None
    return ray


class ChunkScorer:
    """The Ray Data callable class: one model per actor; each input row is a unit, each output row a chunk."""

    def __init__(self, config: dict[str, Any], chunk_rows: int, kill: str | None = None) -> None:
        from ..auto import load
        from ..inference.packed import apply_attention
        from ..temperature import use_calibration

        self.config = ScoreConfig(**config)
        self.chunk_rows = chunk_rows
        self.kill = kill
        self.model = apply_attention(load(self.config.model, precision=self.config.precision), self.config.attention)
        use_calibration(self.model, self.config.calibrated)  # --no-calibration (tinyrm.temperature)

    def _maybe_die(self, chunk: int) -> None:
        if not self.kill:
            return
        target, _, marker = self.kill.partition(":")
        if int(target) == chunk and not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        import pyarrow as pa

        for text, wanted in zip(batch.column("unit").to_pylist(), batch.column("wanted").to_pylist()):
            fields = json.loads(text)
            unit = Unit(**{**fields, "row_groups": tuple(fields["row_groups"])})
            try:
                for chunk in read_unit(unit, self.chunk_rows, self.config.skip_bad_rows, set(wanted)):
                    self._maybe_die(chunk.id)
                    result = score_with_retries(self.model, chunk, self.config)
                    yield pa.table({"chunk": [result.id], "data": pa.array([result.data], pa.binary()),
                                    "counts": [json.dumps(result.counts)], "error": [""]})
            except DataError as error:  # the input's fault: no retry, the run stops with path:line: reason
                yield pa.table({"chunk": [unit.first_chunk], "data": pa.array([b""], pa.binary()),
                                "counts": ["{}"], "error": [str(error)]})


def _start(ray: ModuleType, config: ScoreConfig) -> bool:
    """Connect to or start Ray; True when this call started it (and so stops it)."""
    if ray.is_initialized():
        return False
    address = config.ray_address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False)
    return True


def run_ray(config: ScoreConfig, plan: Plan, store: PartStore, on_done: Callable[[dict[str, Any]], None]) -> None:
    done = store.done()
    units = pending_units(plan, done)
    if not units:
        return
    ray = _import_ray()
    started = _start(ray, config)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the job's own bar counts rows
        items = [{"unit": json.dumps(asdict(unit)),
                  "wanted": [c for c in unit.chunk_ids(plan.chunk_rows) if c not in done]} for unit in units]
        dataset = ray.data.from_items(items).map_batches(
            ChunkScorer, batch_size=1, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=config.num_workers),
            fn_constructor_kwargs={"config": asdict(config), "chunk_rows": plan.chunk_rows,
                                   "kill": os.environ.get(KILL_ENV)},
            num_cpus=config.cpus_per_worker, num_gpus=config.gpus_per_worker or None,
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            for chunk, data, counts, error in zip(*(batch.column(name).to_pylist()
                                                    for name in ("chunk", "data", "counts", "error"))):
                if error:
                    raise DataError(error)
                if chunk in store.counts:  # a unit retried after its worker died sends its chunks again
                    continue
                counts = json.loads(counts)
                store.commit(chunk, data, counts)
                on_done(counts)
    finally:
        if started:
            ray.shutdown()
