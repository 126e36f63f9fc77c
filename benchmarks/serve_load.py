"""Load tests of ``tinyrm serve``, the real server as a subprocess on loopback (``--scenario``).

``closed-loop`` (default): micro-batching on versus ``--max-batch-size 1``. Per setting
(``BATCH:WAIT_MS[:FORWARD]``), N concurrent clients in a closed loop each send one ``/v1/compare``
pair at a time for a bounded time; reports pairs/s, p50/p99 latency, peak server RSS (psutil, process
tree) and the mean batch the server formed (``/health``).

``under-load`` (issue 28, item 6), each against a baseline in the same run:

1. latency: p50/p99 of 1-pair ``/v1/compare`` requests (``--latency-clients``, closed loop) while one
   client keeps a ``--large-items`` ``/v1/compare_batch`` request in flight, ``before`` (the unsliced
   scheduler, emulated by ``--max-batch-size 4096 --slice-pairs 4096``) and ``after`` (the defaults);
2. throughput: pairs/s of a saturating load (``--load-clients`` each looping ``--load-items``-item
   ``/v1/compare_batch`` requests), before versus after (the issue allows fairness to cost 5 %);
3. shed: ms from sending an over-limit request to its 503 (a server with ``--max-items N
   --max-queued-pairs N`` busy with one N-item request), and whether ``Retry-After`` came with it;
4. engines: the after load (1 and 2) on ``tinyrm serve --engine ray --replicas 1`` and ``2`` against the
   single process (``--engines``; Ray ones by default when ``ray.serve`` imports);
5. steps: 1-pair and short ``/v1/score_steps`` latency while a ``--steps-large``-step solution is scored, before
   versus after, on a process checkpoint (``serve_steps.py``).

Texts are HHH dev pairs truncated to ``--max-chars`` (synthetic pairs without ``../shared/data``).
Every server, Ray's processes included, is stopped when its measurement ends, however it ends.

    .venv/bin/python benchmarks/serve_load.py                                 # closed-loop, ~1.5 min
    .venv/bin/python benchmarks/serve_load.py --clients 32 --duration 60 --model runs/my-model
    .venv/bin/python benchmarks/serve_load.py --scenario under-load --output under-load.json  # ~45-70 min
    .venv/bin/python benchmarks/serve_load.py --scenario under-load --smoke   # code check, 2-3 min on 2 cores
    .venv/bin/python benchmarks/serve_load.py --scenario under-load --measures steps  # ~3 min on 2 cores

The under-load run is long on a CPU: a latency measurement lasts until the first 3,000-item request is
answered (``--abandon-large``: not after ``--duration``), and a throughput one until the round of
requests in flight at ``--duration`` is; both are minutes of model time at a few pairs/s per core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import serve_steps
from serve_lib import (
    ClosedLoop,
    Server,
    batch_body,
    idle_p50_ms,
    launch,
    load_pairs,
    percentile,
    wait_idle,
    warm_up,
    while_large,
)
from serve_report import report

MEASURES = ("latency", "throughput", "shed", "engines", "steps")
# The unsliced scheduler: one forward call takes whole requests up to 4,096 pairs (the old batcher took
# any request larger than --max-batch-size whole and alone), so a 1-pair request waits for all of one.
BEFORE = ["--max-batch-size", "4096", "--slice-pairs", "4096"]
SMOKE = dict(duration_s=3.0, idle_s=1.0, large_items=100, steps_large=12, load_items=8, shed_items=300, shed_tries=5,
             max_chars=64, clients=4, max_requests=200)
T0 = time.time()


def progress(message: str) -> None:
    print(f"[{time.time() - T0:5.0f} s] {message}", file=sys.stderr, flush=True)


@dataclass
class LoadConfig:
    scenario: str = "closed-loop"
    model: str = "default"
    clients: int = 16  # closed-loop
    duration_s: float | None = None  # per setting / measurement, after warm-up (None: 20 closed-loop, 60 under-load)
    max_requests: int = 5000  # closed-loop, per setting; bounds the run on a fast machine
    max_chars: int = 400  # truncate texts so the figure measures serving, not 512-token encodes
    # closed-loop: max_batch_size:max_wait_ms[:forward_batch_size]; the last one is the baseline
    settings: list[str] = field(default_factory=lambda: ["64:5", "1:0"])
    startup_timeout_s: float = 300.0
    threads: int = 1  # server torch threads (per Ray replica): 1 avoids OpenMP thrashing on a shared CPU
    output: str | None = None
    # under-load
    measures: list[str] = field(default_factory=lambda: list(MEASURES))
    engines: list[str] | None = None  # local, rayN, either with :THREADS (None: local, ray1, ray2 if Ray Serve)
    latency_clients: int = 2
    large_items: int = 3000
    load_clients: int = 4
    load_items: int = 256
    shed_items: int = 4096
    shed_tries: int = 10
    idle_s: float = 10.0  # 1-pair latency with nothing else running, before each latency measurement
    abandon_large: bool = False  # give up the first large request too at the end of --duration (quicker)
    # Generous: under the unsliced scheduler a 1-pair request waits for a whole large request (3,000 pairs
    # of the embedded model take ~8-12 min on one CPU core), and must not hit its deadline doing so.
    request_timeout_s: float = 1800.0
    server_args: str = ""  # more `tinyrm serve` flags for every server (before's scheduler flags still win)
    steps_large: int = 200  # steps: the long solution's steps (one sequence each)
    steps_model: str | None = None  # steps: a process checkpoint (None: the embedded model trained one step)
    smoke: bool = False


# ----------------------------------------------------------------------------- closed-loop
def run_setting(config: LoadConfig, max_batch: int, max_wait_ms: float, forward: int | None,
                pairs: list[dict]) -> dict:
    args = ["--max-batch-size", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--threads", str(config.threads)]
    args += ["--forward-batch-size", str(forward)] if forward else []
    with launch(config.model, args, startup_timeout_s=config.startup_timeout_s) as server:
        warm_up(server, pairs)
        before = server.health()["batching"]
        bodies = [json.dumps(p).encode() for p in pairs]
        loop = ClosedLoop(server.url, "/v1/compare", bodies, 1, config.clients,
                          time.perf_counter() + config.duration_s, 120, max_requests=config.max_requests,
                          server=server.process)
        started = time.perf_counter()
        res = loop.start().join()
        elapsed = time.perf_counter() - started
        health = server.health()
        after, forward = health["batching"], health["limits"]["forward_batch_size"]
        peak = server.tree.peak
    batches = after["batches"] - before["batches"]
    lat = res.latencies
    return {
        "max_batch_size": max_batch, "max_wait_ms": max_wait_ms, "forward_batch_size": forward,
        "requests": len(lat), "errors": sum(res.outcomes.values()) - len(lat),
        "seconds": elapsed, "pairs_per_s": len(lat) / elapsed,
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"), "p99_ms": 1000 * percentile(lat, 0.99),
        "mean_batch_pairs": (after["pairs"] - before["pairs"]) / batches if batches else 0.0,
        "peak_rss_mb": peak / 2**20,
    }


def closed_loop(config: LoadConfig, pairs: list[dict]) -> list[dict]:
    rows = []
    for setting in config.settings:
        batch, wait, *forward = setting.split(":")
        rows.append(run_setting(config, int(batch), float(wait), int(forward[0]) if forward else None, pairs))
        print(f"done {setting}: {rows[-1]['pairs_per_s']:.1f} pairs/s", file=sys.stderr)
    base = rows[-1]["pairs_per_s"]
    print(f"\ntinyrm serve load test: model {config.model}, {config.clients} concurrent clients, "
          f"{config.duration_s:g}s per setting, one /v1/compare pair per request (both orders), "
          f"{os.cpu_count()} CPU cores, server --threads {config.threads}\n")
    print("| --max-batch-size | --max-wait-ms | forward batch | requests | pairs/s | vs last row | p50 ms | p99 ms "
          "| mean batch (pairs) | peak server RSS MB | errors |")
    print("|" + "---:|" * 11)
    for r in rows:
        print(f"| {r['max_batch_size']} | {r['max_wait_ms']:g} | {r['forward_batch_size']} | {r['requests']} "
              f"| {r['pairs_per_s']:.1f} "
              f"| {r['pairs_per_s'] / base:.2f}x | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
              f"| {r['mean_batch_pairs']:.1f} | {r['peak_rss_mb']:.0f} | {r['errors']} |")
    return rows


# ----------------------------------------------------------------------------- under-load
@dataclass
class Bodies:
    small: list[bytes]  # 1-pair /v1/compare
    large: bytes  # --large-items /v1/compare_batch
    load: list[bytes]  # --load-items /v1/compare_batch, one offset per client
    shed: bytes  # --shed-items /v1/compare_batch


def calls(server: Server, engine: str) -> dict | None:
    """The scheduler's counters (one process only: behind Ray, /health is one replica's)."""
    return server.health()["batching"] if engine == "local" else None


def mean_call(before: dict | None, after: dict | None) -> float | None:
    if before is None or after is None or after["batches"] == before["batches"]:
        return None
    return (after["pairs"] - before["pairs"]) / (after["batches"] - before["batches"])


def measure_latency(config: LoadConfig, server: Server, engine: str, bodies: Bodies) -> dict:
    small = ("/v1/compare", bodies.small, 1)
    idle_p50 = idle_p50_ms(server, config, [small], config.latency_clients)[0]
    (small_res,), large_res, wall = while_large(server, config, ("/v1/compare_batch", [bodies.large],
                                                                 config.large_items), [small], config.latency_clients)
    return {**small_res.summary(), "idle_p50_ms": idle_p50,
            "large_outcomes": dict(large_res.outcomes),
            "large_mean_s": statistics.mean(large_res.latencies) if large_res.latencies else None,
            "wall_s": wall, "peak_rss_mb": server.tree.peak / 2**20}


def measure_throughput(config: LoadConfig, server: Server, engine: str, bodies: Bodies) -> dict:
    before = calls(server, engine)
    # Requests in flight at the end are waited for, and pairs/s counts to the last answer: the server is
    # saturated throughout, however coarse its calls (a before call may hold minutes of work).
    loop = ClosedLoop(server.url, "/v1/compare_batch", bodies.load, config.load_items, config.load_clients,
                      time.perf_counter() + config.duration_s, config.request_timeout_s + 60, server=server.process)
    res = loop.start().join()
    return {**res.summary(), "pairs": res.pairs, "seconds": res.seconds,
            "pairs_per_s": res.pairs / res.seconds if res.seconds else 0.0,
            "mean_call_pairs": mean_call(before, calls(server, engine)), "peak_rss_mb": server.tree.peak / 2**20}


def run_server(config: LoadConfig, engine: str, scheduler: str, args: list[str], phases: list[str],
               bodies: Bodies, pairs: list[dict]) -> tuple[list[dict], dict]:
    """Measure ``phases`` on one server; returns the rows and the server's /health limits."""
    name, _, threads = engine.partition(":")
    replicas = int(name[3:]) if name.startswith("ray") else 1
    threads = threads or str(config.threads)
    kind = "ray" if name.startswith("ray") else "local"
    args = [*args, "--threads", threads] + (["--engine", "ray", "--replicas", str(replicas)] if kind == "ray" else [])
    rows = []
    progress(f"{engine} {scheduler}: starting tinyrm serve {' '.join(args)}")
    with launch(config.model, args, ray=kind == "ray", startup_timeout_s=config.startup_timeout_s) as server:
        limits = server.health()["limits"]
        warm_up(server, pairs, 4 * replicas)
        base = {"engine": engine, "scheduler": scheduler, "replicas": replicas if kind == "ray" else None,
                "threads": int(threads), "limits": limits}
        for phase in phases:
            wait_idle(server, 4 * replicas if kind == "ray" else 1, config.request_timeout_s)
            measure = measure_latency if phase == "latency" else measure_throughput
            rows.append({"measure": phase, **base, **measure(config, server, kind, bodies)})
            progress(f"{engine} {scheduler} {phase}: {summary(rows[-1])}")
    return rows, limits


def summary(row: dict) -> str:
    if row["measure"] == "throughput":
        return f"{row['pairs_per_s']:.2f} pairs/s over {row['seconds']:.0f} s"
    return f"1-pair p50 {row['p50_ms']:.0f} ms over {row['requests']} requests, large {row['large_outcomes']}"


def measure_shed(config: LoadConfig, args: list[str], bodies: Bodies, pairs: list[dict]) -> list[dict]:
    """A server with --max-queued-pairs N holding one N-item request; another N-item request (and a 1-pair
    one) must get 503 with Retry-After at once. Each try waits until an N-item request is accepted."""
    n = str(config.shed_items)
    args = [*args, "--threads", str(config.threads), "--max-items", n, "--max-queued-pairs", n]
    progress(f"shed: starting tinyrm serve {' '.join(args)}")
    with launch(config.model, args, startup_timeout_s=config.startup_timeout_s) as server:
        warm_up(server, pairs)
        done = threading.Event()

        def fill() -> None:  # keeps one N-item request accepted; cut off when the server stops
            with httpx.Client(base_url=server.url, timeout=config.request_timeout_s + 60,
                              headers={"content-type": "application/json"}) as c:
                while not done.is_set():
                    try:
                        c.post("/v1/compare_batch", content=bodies.shed)
                    except httpx.HTTPError:
                        time.sleep(0.1)

        threading.Thread(target=fill, daemon=True).start()
        tries: dict[str, list[tuple[float, int, str | None, bool]]] = {"large": [], "1-pair": []}
        # X-Request-Timeout: a try that slipped in as the filler finished is given up soon (not counted as shed).
        headers = {"content-type": "application/json", "x-request-timeout": "10"}
        with httpx.Client(base_url=server.url, timeout=120, headers=headers) as c:
            for _ in range(config.shed_tries):
                deadline = time.time() + 120
                while server.health()["outstanding_pairs"] < config.shed_items:
                    if time.time() > deadline:
                        raise RuntimeError(f"the {n}-item request was not accepted in 120 s: {server.tail()}")
                    time.sleep(0.02)
                for kind, path, body in (("large", "/v1/compare_batch", bodies.shed),
                                         ("1-pair", "/v1/compare", bodies.small[0])):
                    t0 = time.perf_counter()
                    r = c.post(path, content=body)
                    ms = 1000 * (time.perf_counter() - t0)
                    overloaded = r.status_code == 503 and "overloaded" in r.json().get("error", "")
                    tries[kind].append((ms, r.status_code, r.headers.get("retry-after"), overloaded))
        done.set()
        shed = server.health()["batching"]["shed"]
    progress(f"shed: {sum(t[3] for got in tries.values() for t in got)} of {2 * config.shed_tries} tries "
             f"refused, median {statistics.median(t[0] for t in tries['large']):.0f} ms for the large one")
    rows = []
    for kind, got in tries.items():
        ms = [t[0] for t in got]
        rows.append({"measure": "shed", "engine": "local", "scheduler": "after", "request": kind,
                     "items": config.shed_items if kind == "large" else 1, "tries": len(got),
                     "shed_503": sum(t[3] for t in got), "statuses": [t[1] for t in got],
                     "median_ms": statistics.median(ms), "max_ms": max(ms),
                     "retry_after_present": all(t[2] is not None for t in got if t[1] == 503),
                     "retry_after": [t[2] for t in got], "server_shed_count": shed})
    return rows


def ray_available() -> bool:
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        return False
    return True


def under_load(config: LoadConfig, pairs: list[dict]) -> list[dict]:
    measures = set(config.measures)
    default = ["local", "ray2"] if config.smoke else ["local", "ray1", "ray2"]  # --smoke: the Ray path once
    engines = config.engines or (default if "engines" in measures and ray_available() else ["local"])
    others = [e for e in engines if e != "local"] if "engines" in measures else []
    phases = [p for p in ("latency", "throughput") if p in measures] or ["latency", "throughput"]
    bodies = Bodies([json.dumps(p).encode() for p in pairs], batch_body(pairs, config.large_items),
                    [batch_body(pairs, config.load_items, 37 * k) for k in range(config.load_clients)],
                    batch_body(pairs, config.shed_items))
    # These texts make large bodies: raise the 1 MB default so the item counts are what is measured.
    biggest = max(len(bodies.large), len(bodies.shed), max(map(len, bodies.load)))
    max_bytes = max(1_000_000, int(1.25 * biggest))
    # --graceful-timeout 5: nothing is in flight when a server is stopped, but the shed filler
    common = ["--request-timeout", f"{config.request_timeout_s:g}", "--max-request-bytes", str(max_bytes),
              "--graceful-timeout", "5", *config.server_args.split()]
    rows: list[dict] = []
    before_after = bool(measures & {"latency", "throughput"})
    forward = None
    if before_after or others:
        got, limits = run_server(config, "local", "after", common, phases, bodies, pairs)
        rows += got
        forward = limits["forward_batch_size"]
    if before_after:  # the after server's forward batch: only the scheduling differs
        rows += run_server(config, "local", "before", [*common, *BEFORE, "--forward-batch-size", str(forward)],
                           phases, bodies, pairs)[0]
    if "shed" in measures:
        rows += measure_shed(config, common, bodies, pairs)
    for engine in others:
        rows += run_server(config, engine, "after", common, phases, bodies, pairs)[0]
    if "steps" in measures:
        rows += serve_steps.run(config, common, BEFORE, pairs, progress)
    report(config, rows, max_bytes, forward, BEFORE)
    serve_steps.report(config, rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    d = LoadConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default=d.scenario, choices=["closed-loop", "under-load"])
    p.add_argument("--model", default=d.model, metavar="DIR", help='a checkpoint (default: "default", embedded)')
    p.add_argument("--clients", type=int, default=d.clients, help="closed-loop: concurrent 1-pair clients")
    p.add_argument("--duration", type=float, default=None, dest="duration_s",
                   help="seconds per setting / measurement (default: 20 closed-loop, 60 under-load)")
    p.add_argument("--max-requests", type=int, default=d.max_requests, help="closed-loop: per setting")
    p.add_argument("--max-chars", type=int, default=d.max_chars)
    p.add_argument("--settings", nargs="+", default=d.settings, metavar="BATCH:WAIT_MS[:FORWARD]",
                   help="closed-loop: server settings to compare, baseline last (default: 64:5 batched, 1:0 unbatched)")
    p.add_argument("--threads", type=int, default=d.threads, help="server torch threads (per Ray replica)")
    p.add_argument("--startup-timeout", type=float, default=d.startup_timeout_s, dest="startup_timeout_s")
    p.add_argument("--output", default=None, metavar="FILE.json", help="write the config and every row")
    g = p.add_argument_group("under-load")
    g.add_argument("--measures", nargs="+", default=d.measures, choices=MEASURES)
    g.add_argument("--engines", nargs="+", default=None, metavar="ENGINE[:THREADS]",
                   help="local and/or rayN (N replicas), e.g. local ray1 ray2 local:2 (default: local, plus ray1 "
                        "ray2 when ray.serve imports); local after is the baseline")
    g.add_argument("--latency-clients", type=int, default=d.latency_clients)
    g.add_argument("--large-items", type=int, default=d.large_items)
    g.add_argument("--load-clients", type=int, default=d.load_clients)
    g.add_argument("--load-items", type=int, default=d.load_items)
    g.add_argument("--shed-items", type=int, default=d.shed_items)
    g.add_argument("--shed-tries", type=int, default=d.shed_tries)
    g.add_argument("--idle", type=float, default=d.idle_s, dest="idle_s", help="seconds of idle 1-pair latency")
    g.add_argument("--abandon-large", action="store_true",
                   help="latency: end at --duration even if no large request was answered yet (default: the "
                        "first one is waited for, which takes one large request's time, minutes on a CPU)")
    g.add_argument("--request-timeout", type=float, default=d.request_timeout_s, dest="request_timeout_s")
    g.add_argument("--server-args", default="", metavar="FLAGS",
                   help='more tinyrm serve flags for every server, e.g. --server-args="--max-batch-size 16"')
    g.add_argument("--steps-large", type=int, default=d.steps_large, help="steps: the long solution's steps")
    g.add_argument("--steps-model", default=None, metavar="DIR",
                   help="steps: a process checkpoint (default: the embedded model trained one step on MR-GSM8K)")
    smoke = ", ".join(f"{k}={v}" for k, v in SMOKE.items())
    p.add_argument("--smoke", action="store_true", help=f"a quick check of the code, not a measurement: {smoke}")
    config = LoadConfig(**vars(p.parse_args(argv)))
    if config.smoke:
        for key, value in SMOKE.items():
            setattr(config, key, value)
    if config.duration_s is None:
        config.duration_s = 20.0 if config.scenario == "closed-loop" else 60.0
    pairs = load_pairs(config.max_chars)
    rows = closed_loop(config, pairs) if config.scenario == "closed-loop" else under_load(config, pairs)
    progress("done")
    if config.output:
        machine = {"cpu_count": os.cpu_count(), "load_average_1m": os.getloadavg()[0]}
        Path(config.output).write_text(json.dumps({"config": asdict(config), "machine": machine, "rows": rows},
                                                  indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
