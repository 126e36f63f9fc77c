"""Load test of ``tinyrm serve``: micro-batching on versus ``--max-batch-size 1``.

Starts the real server (``tinyrm serve`` as a subprocess on loopback) once per setting, runs N
concurrent clients in a closed loop (each sends one ``/v1/compare`` pair at a time, taken from
``../shared/data`` dev pairs, or synthetic pairs without it) for a bounded time, and reports
pairs/s, p50/p99 latency, peak server RSS (psutil, server process tree) and the mean batch the
server actually formed (from ``/health``).

    .venv/bin/python benchmarks/serve_load.py                      # ~1.5 min
    .venv/bin/python benchmarks/serve_load.py --clients 32 --duration 60 --model runs/my-model
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@dataclass
class LoadConfig:
    model: str = "default"
    clients: int = 16
    duration_s: float = 20.0  # per setting, after warm-up
    max_requests: int = 5000  # per setting; bounds the run on a fast machine
    max_chars: int = 400  # truncate texts so the figure measures serving, not 512-token encodes
    # max_batch_size:max_wait_ms[:forward_batch_size]; the last one is the baseline
    settings: list[str] = field(default_factory=lambda: ["64:5", "1:0"])
    startup_timeout_s: float = 180.0
    threads: int = 1  # server torch threads: 1 avoids OpenMP thrashing on a shared CPU
    output: str | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_pairs(max_chars: int) -> list[dict]:
    path = SHARED / "dev" / "hhh.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        from tinyrm.tools.synthetic import generate

        rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in generate(200, seed=0)]
    return [{"prompt": r["prompt"][-max_chars:], "a": r["chosen"][:max_chars], "b": r["rejected"][:max_chars]}
            for r in rows]


class RssSampler(threading.Thread):
    """Peak resident memory of a process and its children, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                procs = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                return
            time.sleep(0.05)


def run_setting(config: LoadConfig, max_batch: int, max_wait_ms: float, forward: int | None,
                pairs: list[dict]) -> dict:
    port = free_port()
    exe = Path(sys.executable).with_name("tinyrm")
    cmd = [str(exe), "serve", "--model", config.model, "--port", str(port), "--max-batch-size", str(max_batch),
           "--max-wait-ms", str(max_wait_ms), "--log-level", "warning",
           "--threads", str(config.threads)] + (["--forward-batch-size", str(forward)] if forward else [])
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    url = f"http://127.0.0.1:{port}"
    sampler = RssSampler(server.pid)
    sampler.start()
    try:
        deadline = time.time() + config.startup_timeout_s
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"server exited: {server.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise RuntimeError("server did not start in time")
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=60) as c:  # warm-up: first forward passes are slow
            for p in pairs[:4]:
                c.post("/v1/compare", json=p).raise_for_status()
            before = c.get("/health").json()["batching"]

        latencies: list[float] = []
        errors = [0]
        lock = threading.Lock()
        stop_at = time.perf_counter() + config.duration_s
        budget = [config.max_requests]

        def client(k: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                i = k
                while time.perf_counter() < stop_at:
                    with lock:
                        if budget[0] <= 0:
                            return
                        budget[0] -= 1
                    t0 = time.perf_counter()
                    r = c.post("/v1/compare", json=pairs[i % len(pairs)])
                    dt = time.perf_counter() - t0
                    with lock:
                        if r.status_code == 200:
                            latencies.append(dt)
                        else:
                            errors[0] += 1
                    i += config.clients

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(config.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        health = httpx.get(f"{url}/health", timeout=10).json()
        after, forward = health["batching"], health["limits"]["forward_batch_size"]
    finally:
        sampler.stop.set()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    batches = after["batches"] - before["batches"]
    lat = sorted(latencies)
    return {
        "max_batch_size": max_batch, "max_wait_ms": max_wait_ms, "forward_batch_size": forward,
        "requests": len(lat), "errors": errors[0],
        "seconds": elapsed, "pairs_per_s": len(lat) / elapsed,
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "mean_batch_pairs": (after["pairs"] - before["pairs"]) / batches if batches else 0.0,
        "peak_rss_mb": sampler.peak / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    d = LoadConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=d.model)
    p.add_argument("--clients", type=int, default=d.clients)
    p.add_argument("--duration", type=float, default=d.duration_s, dest="duration_s")
    p.add_argument("--max-requests", type=int, default=d.max_requests)
    p.add_argument("--max-chars", type=int, default=d.max_chars)
    p.add_argument("--settings", nargs="+", default=d.settings, metavar="BATCH:WAIT_MS[:FORWARD]",
                   help="server settings to compare, baseline last (default: 64:5 batched, 1:0 unbatched)")
    p.add_argument("--threads", type=int, default=d.threads, help="server torch threads")
    p.add_argument("--output", default=None)
    config = LoadConfig(**vars(p.parse_args(argv)))
    pairs = load_pairs(config.max_chars)
    rows = []
    for setting in config.settings:
        batch, wait, *forward = setting.split(":")
        rows.append(run_setting(config, int(batch), float(wait), int(forward[0]) if forward else None, pairs))
        print(f"done {setting}: {rows[-1]['pairs_per_s']:.1f} pairs/s", file=sys.stderr)
    base = rows[-1]["pairs_per_s"]
    print(f"\ntinyrm serve load test: model {config.model}, {config.clients} concurrent clients, "
          f"{config.duration_s:.0f}s per setting, one /v1/compare pair per request (both orders), "
          f"{os.cpu_count()} CPU cores, server --threads {config.threads}\n")
    print("| --max-batch-size | --max-wait-ms | forward batch | requests | pairs/s | vs last row | p50 ms | p99 ms "
          "| mean batch (pairs) | peak server RSS MB | errors |")
    print("|" + "---:|" * 11)
    for r in rows:
        print(f"| {r['max_batch_size']} | {r['max_wait_ms']:g} | {r['forward_batch_size']} | {r['requests']} "
              f"| {r['pairs_per_s']:.1f} "
              f"| {r['pairs_per_s'] / base:.2f}x | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
              f"| {r['mean_batch_pairs']:.1f} | {r['peak_rss_mb']:.0f} | {r['errors']} |")
    if config.output:
        Path(config.output).write_text(json.dumps({"config": asdict(config), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
