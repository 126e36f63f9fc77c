"""Helpers of ``benchmarks/serve_load.py``: run ``tinyrm serve`` (one process or Ray Serve replicas) as a
subprocess that is always stopped, measure its process tree's peak RSS, and drive it with closed-loop clients.

Not a benchmark itself. Kept apart from ``speedlib.py``, which imports torch: the load clients need none,
and a torch import in the client process would only take memory from the server being measured.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_pairs(max_chars: int) -> list[dict]:
    """HHH dev pairs (synthetic ones without ``../shared/data``), texts truncated to ``max_chars``."""
    path = SHARED / "dev" / "hhh.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        from tinyrm.tools.synthetic import generate

        rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in generate(200, seed=0)]
    return [{"prompt": r["prompt"][-max_chars:], "a": r["chosen"][:max_chars], "b": r["rejected"][:max_chars]}
            for r in rows]


def batch_body(pairs: list[dict], n: int, offset: int = 0) -> bytes:
    """A ``/v1/compare_batch`` body of ``n`` items, cycling through ``pairs`` from ``offset``."""
    return json.dumps({"items": [pairs[(offset + i) % len(pairs)] for i in range(n)]}).encode()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (NaN for no values), as the server's /health computes it."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class ProcessTree(threading.Thread):
    """Peak resident memory of a process and its descendants, sampled every 100 ms, and every descendant
    ever seen: Ray's GCS, raylet and workers are the server's descendants, and any that outlive it are
    killed afterwards (``stop_tree``). Shared pages (Ray's object store) count once per process."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.seen: dict[int, psutil.Process] = {pid: self.root}
        self.peak = 0
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def members(self) -> list[psutil.Process]:
        """Live processes of the tree: one /proc scan (ppid map), descendants of every process seen so far,
        so a raylet reparented to init when the server exits is still found."""
        children: dict[int, list[int]] = {}
        for p in psutil.process_iter(["ppid"]):
            children.setdefault(p.info["ppid"], []).append(p.pid)
        with self.lock:
            stack = list(self.seen)
            while stack:
                pid = stack.pop()
                for child in children.get(pid, []):
                    if child not in self.seen:
                        try:
                            self.seen[child] = psutil.Process(child)
                        except psutil.Error:
                            continue
                        stack.append(child)
            alive = []
            for p in self.seen.values():
                try:
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                        alive.append(p)
                except psutil.Error:
                    pass
            return alive

    def run(self) -> None:
        while not self.halt.is_set():
            total = 0
            for p in self.members():
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self.halt.wait(0.1)


def stop_tree(process: subprocess.Popen, tree: ProcessTree | None, timeout_s: float) -> list[str]:
    """SIGTERM the server and wait (it drains; Ray shuts Serve and its own Ray down), SIGKILL past
    ``timeout_s``; then end whatever of its tree outlived it, TERM then KILL. Returns those leftovers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"server {process.pid} still running {timeout_s:g} s after SIGTERM: SIGKILL", file=sys.stderr)
            process.kill()
            process.wait()
    if tree is None:
        return []
    tree.halt.set()
    left = [p for p in tree.members() if p.pid != process.pid]
    _, left = psutil.wait_procs(left, timeout=10)  # Ray's processes exit a moment after the driver
    names = []
    for p in left:
        try:
            names.append(f"{p.pid} {p.name()}")
            p.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(left, timeout=5)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    if names:
        print(f"ended {len(names)} processes that outlived the server: {', '.join(names)}", file=sys.stderr)
    return names


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    tree: ProcessTree
    log: deque  # the server's last output lines (stdout and stderr)

    def health(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/health", timeout=30)
        r.raise_for_status()
        return r.json()

    def tail(self) -> str:
        return "\n".join(self.log)


def warm_up(server: Server, pairs: list[dict], n: int = 4) -> None:
    """First forward passes are slow (allocations, token cache): keep them out of the measurement."""
    with httpx.Client(base_url=server.url, timeout=600) as c:
        for p in pairs[:n]:
            c.post("/v1/compare", json=p).raise_for_status()


def wait_idle(server: Server, answers: int = 1, timeout_s: float = 3600.0) -> None:
    """Until /health says idle ``answers`` times in a row (behind Ray each answer is one replica's): a call of
    work whose client gave up still holds the model thread, and must not count against the next phase."""
    deadline, idle = time.time() + timeout_s, 0
    while idle < answers and time.time() < deadline:
        health = server.health()
        idle = idle + 1 if not health["busy"] and not health["queued"] else 0
        time.sleep(0.1)


def fmt(x: Any, spec: str = ".0f") -> str:
    """A table cell: n/a for None or NaN."""
    return "n/a" if x is None or x != x else format(x, spec)


@contextmanager
def launch(model: str, args: Sequence[str], *, ray: bool = False, startup_timeout_s: float = 300.0,
           stop_timeout_s: float = 90.0) -> Iterator[Server]:
    """``tinyrm serve --model MODEL ARGS`` on a free loopback port, ready to answer; always stopped on exit,
    its whole process tree included (``stop_tree``)."""
    port = free_port()
    exe = Path(sys.executable).with_name("tinyrm")
    cmd = [str(exe), "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
           *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    ray_dir = None
    if ray:  # a local Ray of its own, stopped with the server, whatever the caller's environment names
        env.pop("RAY_ADDRESS", None)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # Its own temp dir: sessions and logs apart from other Rays here, and no /tmp/ray/ray_current_cluster
        # (the last `ray start`, even a dead one), which a ray.init() without address="local" would join.
        ray_dir = tempfile.mkdtemp(prefix="trm-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        env["RAY_TMPDIR"] = ray_dir
    # One pipe read by a thread: an unread pipe fills (Ray logs a lot) and would stall the server.
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log: deque = deque(maxlen=200)
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.append(line.rstrip())
            # "tinyrm serve: MODEL on ...; http://HOST:PORT ...": under Ray, printed once every replica runs
            if line.startswith("tinyrm serve:") and "http://" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    tree: ProcessTree | None = None
    try:
        tree = ProcessTree(process.pid)
        tree.start()
        server = Server(f"http://127.0.0.1:{port}", process, tree, log)
        deadline = time.time() + startup_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited ({process.returncode}): {server.tail()[-3000:]}")
            if not ray or ready.is_set():  # Ray's proxy answers (404) before the application is deployed
                try:
                    if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            if time.time() > deadline:
                raise RuntimeError(f"server did not start in {startup_timeout_s:g} s: {server.tail()[-3000:]}")
            time.sleep(0.25)
        yield server
    finally:
        stop_tree(process, tree, stop_timeout_s)
        if ray_dir is not None:
            shutil.rmtree(ray_dir, ignore_errors=True)


@dataclass
class LoopResult:
    latencies: list[float] = field(default_factory=list)  # seconds, answered (200) requests only
    outcomes: Counter = field(default_factory=Counter)  # "200", "503", "abandoned", "ReadError", ...
    retry_after: Counter = field(default_factory=Counter)  # Retry-After values of the 503s ("missing" if none)
    pairs: int = 0  # pairs answered (200 only)
    started: float | None = None  # perf_counter of the first send
    finished: float | None = None  # perf_counter of the last answer

    @property
    def seconds(self) -> float:
        return self.finished - self.started if self.started is not None and self.finished is not None else 0.0

    def summary(self, prefix: str = "") -> dict[str, Any]:
        lat = self.latencies
        return {f"{prefix}requests": len(lat), f"{prefix}outcomes": dict(self.outcomes),
                f"{prefix}p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
                f"{prefix}p99_ms": 1000 * percentile(lat, 0.99),
                f"{prefix}max_ms": 1000 * max(lat, default=float("nan"))}


class ClosedLoop:
    """``clients`` threads, each sending its next request as soon as the last one was answered or refused,
    until ``stop_at`` (``time.perf_counter()``; or until ``until()`` is true, when given) or ``max_requests``
    sent in all. Requests in flight at the end are waited for (their latency is the measurement), or with
    ``abandon`` given up at ``stop_at``: the client disconnects and the server drops what it has not scored
    yet. ``keep_first``: each client's first request is sent and waited for whatever the time."""

    def __init__(self, url: str, path: str, bodies: Sequence[bytes], pairs_per_request: int, clients: int,
                 stop_at: float, timeout_s: float, abandon: bool = False, max_requests: int | None = None,
                 server: subprocess.Popen | None = None, until: Callable[[], bool] | None = None,
                 keep_first: bool = False) -> None:
        self.url, self.path, self.bodies, self.n = url, path, bodies, pairs_per_request
        self.clients, self.stop_at, self.timeout_s, self.abandon = clients, stop_at, timeout_s, abandon
        self.until, self.keep_first = until, keep_first
        self.budget = max_requests
        self.server = server
        self.result = LoopResult()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(clients)]

    @property
    def done(self) -> bool:
        return not any(t.is_alive() for t in self.threads)

    def start(self) -> ClosedLoop:
        for t in self.threads:
            t.start()
        return self

    def join(self) -> LoopResult:
        for t in self.threads:
            t.join()
        return self.result

    def _take(self) -> bool:
        with self.lock:
            if self.budget is None:
                return True
            self.budget -= 1
            return self.budget >= 0

    def _running(self, first: bool) -> bool:
        if first and self.keep_first:
            return True
        return not self.until() if self.until is not None else time.perf_counter() < self.stop_at

    def _client(self, k: int) -> None:
        res, i, first = self.result, k, True
        with httpx.Client(base_url=self.url, headers={"content-type": "application/json"}) as c:
            while self._running(first) and self._take():
                # With abandon, the read timeout is the time left: at stop_at the connection closes.
                abandon = self.abandon and not (first and self.keep_first)
                read = max(0.01, self.stop_at - time.perf_counter()) if abandon else self.timeout_s
                first = False
                timeout = httpx.Timeout(connect=30, read=read, write=120, pool=30)
                t0 = time.perf_counter()
                with self.lock:
                    res.started = t0 if res.started is None else min(res.started, t0)
                try:
                    r = c.post(self.path, content=self.bodies[i % len(self.bodies)], timeout=timeout)
                    outcome = str(r.status_code)
                except httpx.ReadTimeout:
                    r, outcome = None, "abandoned" if abandon else "ReadTimeout"
                except httpx.TransportError as error:
                    r, outcome = None, type(error).__name__
                dt = time.perf_counter() - t0
                with self.lock:
                    res.outcomes[outcome] += 1
                    if r is not None and r.status_code == 200:
                        res.latencies.append(dt)
                        res.pairs += self.n
                        res.finished = t0 + dt if res.finished is None else max(res.finished, t0 + dt)
                    elif r is not None and r.status_code == 503:
                        res.retry_after[r.headers.get("retry-after", "missing")] += 1
                if r is None or r.status_code != 200:
                    if self.server is not None and self.server.poll() is not None:
                        return  # the server is gone: nothing more to measure
                    time.sleep(0.1)  # a refused or failed request: do not spin on the server
                i += self.clients


Request = tuple[str, Sequence[bytes], int]  # (path, bodies to cycle through, pairs or steps per request)


def idle_p50_ms(server: Server, config, small: Sequence[Request], clients: int) -> list[float]:
    """p50 latency (ms) of each kind in ``small`` with nothing else sent: ``clients`` closed-loop clients per kind,
    all kinds at once, for ``config.idle_s``."""
    stop = time.perf_counter() + config.idle_s
    loops = [ClosedLoop(server.url, path, bodies, n, clients, stop, config.request_timeout_s + 60,
                        server=server.process).start() for path, bodies, n in small]
    return [loop.join().summary()["p50_ms"] for loop in loops]


def while_large(server: Server, config, large: Request, small: Sequence[Request],
                clients: int) -> tuple[list[LoopResult], LoopResult, float]:
    """One client keeps a ``large`` request in flight while ``clients`` closed-loop clients per kind send ``small``
    ones, for at least ``config.duration_s``: the first large request is waited for (its outcome is part of the
    result; not with ``config.abandon_large``), one still in flight at the end of the duration after that is given
    up (the server drops its remaining slices). The small clients run until both, and their requests in flight
    then are waited for. Returns the small kinds' results, the large one's and the wall seconds."""
    timeout = config.request_timeout_s + 60
    t0 = time.perf_counter()
    stop = t0 + config.duration_s
    path, bodies, n = large
    big = ClosedLoop(server.url, path, bodies, n, 1, stop, timeout, abandon=True, server=server.process,
                     keep_first=not config.abandon_large).start()
    time.sleep(min(0.5, config.duration_s / 4))  # the large request is in before the first small one
    loops = [ClosedLoop(server.url, p, b, k, clients, stop, timeout, server=server.process,
                        until=lambda: time.perf_counter() >= stop and big.done).start() for p, b, k in small]
    results = [loop.join() for loop in loops]
    return results, big.join(), time.perf_counter() - t0
