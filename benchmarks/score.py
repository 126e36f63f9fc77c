"""``tinyrm score`` measured: speed against ``compare_batch``, peak memory against the input size, resume.

In one run, on the same pairs (the first ``--pairs`` rows of ``../shared/data/train/*.jsonl``, taken
in turn from each file; the offline synthetic set when the shared data is absent):

* ``compare_batch``: ``rm.compare_batch(pairs, batch_size=B)`` on the loaded model, timed before and after the
  local run (the better of the two): the model's work alone;
* ``--engine local``: ``tinyrm.score(...)`` end to end (planning, reading, model load, scoring, the
  part files, the joined Parquet output); target: at least 90% of ``compare_batch``'s pairs/s;
* ``--engine ray`` with 1 and 2 workers (``--workers``) on a local Ray started here, the CPUs shared
  out among the workers (``cpus_per_worker``), so each configuration has the whole machine;
* peak RSS of a ``tinyrm score`` process (``--engine local``, its own process, ``ru_maxrss``) for
  each of ``--rss-rows`` input rows, made by repeating the shared rows: flat in the input size;
* resume: a ``tinyrm score`` process killed (SIGKILL) once half its chunks are done, then started
  again with the same arguments: the resumed run's time against an uninterrupted run's.

    python benchmarks/score.py                                   # embedded MiniLM: 2,000 pairs, 2,000 / 50,000 rows
    python benchmarks/score.py --tiny --pairs 64 --rss-rows 200 1000 --resume-rows 64   # smoke run, a minute
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import speedlib  # noqa: E402

SPEED_COLUMNS = [("what", "what", ""), ("rows", "pairs", ""), ("seconds", "seconds", ".2f"),
                 ("rows_per_s", "pairs/s", ".1f"), ("vs_compare_batch", "vs compare_batch", ".1%")]
MEMORY_COLUMNS = [("rows", "input rows", ""), ("peak_rss_mib", "peak RSS (MiB)", ".0f"),
                  ("seconds", "seconds", ".1f"), ("rows_per_s", "rows/s", ".1f")]


def shared_rows(n: int) -> list[dict]:
    """``n`` rows, in turn from each shared train file, repeated (with a ``copy`` column) past their number."""
    files = sorted((speedlib.DATA / "train").glob("*.jsonl"))
    if files:
        per_file = [[json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
                    for f in files]
        pool = [row for group in itertools.zip_longest(*per_file) for row in group if row is not None]
    else:
        from tinyrm.tools.synthetic import generate

        pool = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "domain": p.domain}
                for p in generate(2000, seed=0)]
    return [{**pool[i % len(pool)], "copy": i // len(pool)} for i in range(n)]


def write_rows(rows: list[dict], path: Path) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def model_path(args: argparse.Namespace, work: Path) -> str:
    if not args.tiny:
        return args.model
    sys.path.insert(0, str(speedlib.ROOT))
    from tests.score_helpers import save_spread_model

    return save_spread_model(work / "tiny-model")


def speed(args: argparse.Namespace, model: str, work: Path) -> list[dict]:
    import tinyrm

    rows = shared_rows(args.pairs)
    data = write_rows(rows, work / "pairs.jsonl")
    pairs = [(row["prompt"], row["chosen"], row["rejected"]) for row in rows]
    start = time.perf_counter()
    rm = tinyrm.load(model)
    load_s = time.perf_counter() - start
    rm.compare_batch(pairs[:8], batch_size=args.batch_size)  # warm-up

    def direct() -> float:
        cache = getattr(getattr(rm, "encoder", None), "_cache", None)
        if cache is not None:
            cache.clear()  # tokenisation is part of both sides
        start = time.perf_counter()
        rm.compare_batch(pairs, batch_size=args.batch_size)
        return time.perf_counter() - start

    common = dict(model=model, data=[str(data)], batch_size=args.batch_size, progress=False)
    before = direct()
    result = tinyrm.score(output=str(work / "local.parquet"), **common)
    base = min(before, direct())  # before and after the local run: the better of the two
    out = [{"what": "compare_batch (best of 2)", "rows": len(pairs), "seconds": base, "rows_per_s": len(pairs) / base,
            "vs_compare_batch": 1.0},
           {"what": "score --engine local", "rows": result.rows, "seconds": result.seconds},
           {"what": "score --engine local, less one model load", "rows": result.rows,
            "seconds": result.seconds - load_s}]
    if args.workers:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            for workers in args.workers:
                result = tinyrm.score(output=str(work / f"ray-{workers}.parquet"), engine="ray", num_workers=workers,
                                      cpus_per_worker=max(1, (os.cpu_count() or 1) // workers), **common)
                out.append({"what": f"score --engine ray, {workers} worker{'s' * (workers > 1)}", "rows": result.rows,
                            "seconds": result.seconds})
        finally:
            ray.shutdown()
    for row in out[1:]:
        row["rows_per_s"] = row["rows"] / row["seconds"]
        row["vs_compare_batch"] = row["rows_per_s"] / out[0]["rows_per_s"]
    return out


def score_command(model: str, data: Path, output: Path, args: argparse.Namespace, chunk_rows: int) -> list[str]:
    return [sys.executable, "-m", "tinyrm", "score", "--model", model, "--data", str(data), "--output", str(output),
            "--batch-size", str(args.batch_size), "--chunk-rows", str(chunk_rows), "--no-progress"]


def run_measured(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def memory(args: argparse.Namespace, model: str, work: Path) -> list[dict]:
    out = []
    for n in args.rss_rows:
        data = write_rows(shared_rows(n), work / f"rss-{n}.jsonl")
        seconds, peak = run_measured(score_command(model, data, work / f"rss-{n}.parquet", args, args.chunk_rows))
        out.append({"rows": n, "peak_rss_mib": peak, "seconds": seconds, "rows_per_s": n / seconds})
        print(f"{n} rows: peak RSS {peak:.0f} MiB, {seconds:.1f}s", flush=True)
    return out


def resume(args: argparse.Namespace, model: str, work: Path) -> dict:
    data = write_rows(shared_rows(args.resume_rows), work / "resume.jsonl")
    chunk_rows = max(1, args.resume_rows // 10)
    whole, _ = run_measured(score_command(model, data, work / "whole.parquet", args, chunk_rows))
    output = work / "resumed.parquet"
    proc = subprocess.Popen(score_command(model, data, output, args, chunk_rows), stdout=subprocess.DEVNULL)
    parts = Path(f"{output}.parts")
    start = time.perf_counter()
    while len(list(parts.glob("part-*.json"))) < 5 and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_after = time.perf_counter() - start
    done = len(list(parts.glob("part-*.json")))
    resumed, _ = run_measured(score_command(model, data, output, args, chunk_rows))
    same = output.read_bytes() == (work / "whole.parquet").read_bytes()
    return {"rows": args.resume_rows, "chunks": 10, "chunks_done_at_kill": done, "killed_after_s": killed_after,
            "uninterrupted_s": whole, "resumed_s": resumed, "same_output": same}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="a tinyrm model folder (default: the embedded MiniLM)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer random BERT instead (smoke runs)")
    p.add_argument("--pairs", type=int, default=2000, help="pairs of the speed comparison")
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="Ray worker counts (none: skip Ray)")
    p.add_argument("--rss-rows", type=int, nargs="*", default=[2000, 50000], help="input sizes of the memory runs")
    p.add_argument("--resume-rows", type=int, default=2000, help="input size of the resume run (0: skip)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-rows", type=int, default=1024, help="--chunk-rows of the memory runs")
    p.add_argument("--output", default="runs/bench/score.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="score-bench-") as tmp:
        work = Path(tmp)
        model = model_path(args, work)
        rows = speed(args, model, work)
        table = speedlib.markdown_table(rows, SPEED_COLUMNS)
        print(f"\n{table}\n", flush=True)
        mem = memory(args, model, work)
        mem_table = speedlib.markdown_table(mem, MEMORY_COLUMNS)
        print(f"\n{mem_table}\n", flush=True)
        res = resume(args, model, work) if args.resume_rows else None
    if res:
        print(f"resume: {res['rows']} rows in {res['chunks']} chunks; killed after {res['chunks_done_at_kill']} "
              f"chunks; resumed run {res['resumed_s']:.1f}s against {res['uninterrupted_s']:.1f}s uninterrupted; "
              f"same output: {res['same_output']}")
    print(f"model: {'tiny random BERT' if args.tiny else args.model}; machine: {speedlib.machine_info()}")
    speedlib.write_json(args.output, {"config": vars(args), "machine": speedlib.machine_info(), "speed": rows,
                                      "memory": mem, "resume": res, "tables": [table, mem_table]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
