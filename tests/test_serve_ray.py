"""``tinyrm serve --engine ray``: a real server with 2 CPU replicas on a local Ray it starts itself.

The options' checks and the replica class itself (its app, lifespan and health check) are tested
without Ray first.

One such server (and one single-process ``tinyrm serve`` on the same model and options) serves the
whole module, since Ray and the replicas take tens of seconds to start here: its answers equal the
single process's, a replica killed under load is replaced with no more failures than the requests it
held, and SIGTERM shuts Serve and the Ray it started down (last test).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tinyrm.serving.app import ServeConfig
from tinyrm.serving.ray_serve import ReplicaApp

from .integration_helpers import save_opinionated_bert

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
OPTIONS = ["--api-key", KEY, "--threads", "1", "--max-items", "40", "--max-candidates", "6", "--max-documents", "5",
           "--max-request-bytes", "20000", "--log-level", "warning"]
# Attaches to the server's Ray (2.60 turns token auth on for a local ray.init: the token is in ~/.ray and
# a client naming an address must ask for it), waits until Serve runs 2 replicas, prints {name: pid}.
REPLICAS = r"""
import json, os, sys, time
import ray
from ray import serve
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + float(sys.argv[2])
while True:
    app = serve.status().applications.get("tinyrm")
    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if a["name"].startswith("SERVE_REPLICA::tinyrm#"))
    running = app.deployments["TinyRM"].replica_states.get("RUNNING", 0) if app else 0
    if app and app.status == "RUNNING" and running == 2 and len(names) == 2:
        break
    if time.monotonic() > deadline:
        sys.exit(f"replicas not running: {app}")
    time.sleep(0.25)
pid = lambda name: ray.get(ray.get_actor(name, namespace="serve").__ray_call__.remote(lambda self: os.getpid()),
                           timeout=60)
print(json.dumps({name: pid(name) for name in names}))
ray.shutdown()
"""


@pytest.mark.parametrize("options, message", [
    (dict(engine="k8s"), "engine must be one of local, ray"),
    (dict(engine="ray", replicas=0), "replicas must be >= 1"),
    (dict(engine="ray", gpus_per_replica=-1), "gpus_per_replica must be >= 0"),
    (dict(replicas=2), "need engine 'ray'"),
    (dict(ray_address="10.0.0.1:6379"), "need engine 'ray'"),
])
def test_ray_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        ServeConfig(**options)


def test_the_cli_refuses_replicas_without_the_ray_engine(tiny_bert, capsys):
    from tinyrm.cli import main

    assert main(["serve", "--model", tiny_bert, "--replicas", "2"]) == 2  # before any model loads
    assert "need engine 'ray' (--engine ray)" in capsys.readouterr().err


def test_a_replica_builds_the_app_around_its_own_model_and_checks_its_batcher(tiny_bert):
    """What Serve does with the class: construct it (the model path, not the model), call
    ``__serve_build_asgi_app__``, run the app's lifespan (which starts the batcher), health-check it."""
    from fastapi.testclient import TestClient

    replica = ReplicaApp(tiny_bert, {"engine": "ray", "replicas": 2, "max_items": 7})
    assert str(replica.rm.device) == "cpu"  # no GPU asked for: the CPU, whatever the machine has
    app = replica.__serve_build_asgi_app__()
    with pytest.raises(RuntimeError, match="batcher is not running"):
        replica.check_health()  # lifespan not run yet
    with TestClient(app) as client:
        replica.check_health()
        assert client.get("/health").json()["limits"]["max_items"] == 7
        assert 0 <= client.post("/v1/compare", json={"prompt": "p", "a": "x", "b": "y"}).json()["prob_a"] <= 1
    with pytest.raises(RuntimeError, match="batcher is not running"):
        replica.check_health()  # lifespan over: the batcher stopped


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(model: str, log: Path, *extra: str) -> Server:
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "tinyrm")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray, whatever the caller's
    with log.open("w") as out:  # a file, not a pipe nobody reads while the tests run
        proc = subprocess.Popen([exe, "serve", "--model", model, "--port", str(port), *OPTIONS, *extra],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    return Server(f"http://127.0.0.1:{port}", proc, log)


def wait_ready(server: Server, timeout: float = 300) -> None:
    """Until the command said where it listens and /health answers 200 (Serve's proxy answers 404
    before the app is deployed)."""
    deadline = time.monotonic() + timeout
    while True:
        assert server.proc.poll() is None, server.tail()
        assert time.monotonic() < deadline, f"server did not start:\n{server.tail()}"
        try:
            if "(docs at /docs)" in server.log.read_text() and httpx.get(f"{server.url}/health", timeout=5).is_success:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    pytest.importorskip("ray.serve")  # the ray extra (tinyrm[ray])
    root = tmp_path_factory.mktemp("serve-ray")
    model = save_opinionated_bert(root / "model")
    ray_server = launch(model, root / "ray.log", "--engine", "ray", "--replicas", "2")
    local = launch(model, root / "local.log")
    try:
        wait_ready(ray_server)
        wait_ready(local)
        yield local, ray_server
    finally:
        stop(ray_server)
        stop(local)


def ray_address(server: Server) -> str:
    line = next(line for line in server.log.read_text().splitlines() if "(Ray at " in line)
    return line.split("(Ray at ", 1)[1].split(")", 1)[0]


def replicas(server: Server, timeout: float = 120) -> dict[str, int]:
    """{replica actor name: pid} once Serve reports 2 running replicas."""
    out = subprocess.run([sys.executable, "-c", REPLICAS, ray_address(server), str(timeout)], capture_output=True,
                         text=True, timeout=timeout + 60, env={**os.environ, "RAY_AUTH_MODE": "token"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    """Equal JSON, floats within ``tol``."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(a, b, abs_tol=tol)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    return a == b


CANDIDATES = ["Paris.", "Rome.", "It is Paris, on the Seine.", "No idea", "Lyon"]
ITEMS = [{"prompt": "2+2?", "a": "4", "b": "5"}, {"prompt": "Capital of France?", "a": "Paris", "b": "Rome"},
         {"prompt": "Hi", "a": "Hello!", "b": "Go away."}]
REQUESTS: list[tuple[str, str, dict | None, dict | None, int]] = [  # method, path, body, headers, status
    ("POST", "/v1/compare", {"prompt": "2+2?", "a": "4", "b": "5"}, AUTH, 200),
    ("POST", "/v1/compare", {"prompt": "2+2?", "a": "4", "b": "5", "both_orders": False}, AUTH, 200),
    ("POST", "/v1/compare_batch", {"items": ITEMS}, AUTH, 200),
    ("POST", "/v1/compare_batch", {"items": []}, AUTH, 200),
    ("POST", "/v1/rank", {"prompt": "Capital of France?", "candidates": CANDIDATES, "method": "knockout"}, AUTH, 200),
    ("POST", "/v1/rank", {"prompt": "Capital of France?", "candidates": CANDIDATES, "method": "round_robin"}, AUTH,
     200),
    ("POST", "/v1/rerank", {"query": "Capital of France?", "documents": CANDIDATES, "top_n": 3}, AUTH, 200),
    ("POST", "/v2/rerank", {"query": "Capital?", "documents": [{"text": "Paris"}, {"text": "Rome"}],
                            "return_documents": True}, AUTH, 200),
    ("GET", "/openapi.json", None, None, 200),
    ("POST", "/v1/compare", {"prompt": "p", "a": "x"}, AUTH, 422),  # missing b
    ("POST", "/v1/compare_batch", {"items": ITEMS * 14}, AUTH, 422),  # over --max-items
    ("POST", "/v1/rank", {"prompt": "p", "candidates": CANDIDATES * 2}, AUTH, 422),  # over --max-candidates
    ("POST", "/v1/compare", {"prompt": "p", "a": "x", "b": "y"}, None, 401),  # no key
    ("POST", "/v1/compare", {"prompt": "p", "a": "x", "b": "y"}, {"Authorization": "Bearer wrong"}, 401),
    ("POST", "/v1/compare_batch", {"items": [{"prompt": "p" * 30000, "a": "x", "b": "y"}]}, AUTH, 413),
    ("POST", "/v1/score_steps", {"problem": "1+1?", "steps": ["1+1=2"]}, AUTH, 400),  # a pairwise model
    ("GET", "/v1/compare", None, AUTH, 405),
    ("GET", "/v1/nothing", None, AUTH, 404),
]


@pytest.mark.parametrize("method, path, body, headers, status", REQUESTS,
                         ids=[f"{m} {p} {i} ({status})" for i, (m, p, _, _, status) in enumerate(REQUESTS)])
def test_answers_equal_the_single_process_server(servers, method, path, body, headers, status):
    local, ray_server = servers
    answers = [httpx.request(method, f"{s.url}{path}", json=body, headers=headers, timeout=120)
               for s in (local, ray_server)]
    (want, got) = answers
    assert want.status_code == status, want.text
    assert got.status_code == status, got.text
    assert close(got.json(), want.json()), (got.json(), want.json())
    for name in ("content-type", "www-authenticate", "allow", "retry-after"):
        assert got.headers.get(name) == want.headers.get(name), name


def test_health_describes_the_same_model_and_limits(servers):
    local, ray_server = servers
    want, got = (httpx.get(f"{s.url}/health", timeout=30).json() for s in (local, ray_server))
    for field in ("status", "model", "objective", "device", "limits"):
        assert got[field] == want[field], (field, got, want)
    assert set(got) == set(want), (got, want)


@dataclass
class Call:
    started: float
    ended: float
    status: int | str  # an HTTP status, or the transport error's name
    text: str = ""  # the body of a failure


def test_a_killed_replica_is_replaced_and_fails_only_the_requests_it_held(servers):
    _, ray_server = servers
    before = replicas(ray_server)
    victim, pid = sorted(before.items())[0]
    calls: list[Call] = []
    done = threading.Event()
    body = {"items": [{"prompt": f"Question {i}? " * 8, "a": "A long answer. " * 10, "b": "Short."} for i in range(6)]}

    def client() -> None:  # a closed loop: the replicas always hold requests
        with httpx.Client(base_url=ray_server.url, headers=AUTH, timeout=120) as http:
            while not done.is_set():
                started = time.monotonic()
                try:
                    answer = http.post("/v1/compare_batch", json=body)
                    status, text = answer.status_code, ("" if answer.status_code == 200 else answer.text[:200])
                except httpx.TransportError as error:
                    status, text = type(error).__name__, str(error)
                calls.append(Call(started, time.monotonic(), status, text))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        after = replicas(ray_server)  # blocks until Serve runs 2 replicas again
        replaced = time.monotonic()
        time.sleep(2)  # and the load keeps being answered
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=180)
    assert victim not in after and len(after) == 2 and pid not in after.values()
    assert set(after) & set(before), "the surviving replica was disturbed"
    failed = [c for c in calls if c.status != 200]  # Serve's proxy answers 500 for a request its replica lost
    held = [c for c in calls if c.started <= killed <= c.ended]  # in flight when the replica died
    assert all(c.started <= killed for c in failed), failed  # nothing sent after the kill failed
    assert len(failed) <= len(held) <= len(threads), (failed, held)
    assert any(c.started > killed and c.status == 200 for c in calls)  # the survivor answered meanwhile
    assert any(c.started > replaced and c.status == 200 for c in calls)
    print(f"{len(calls)} calls, {len(failed)} failed ({[(c.status, c.text) for c in failed]}), {len(held)} held "
          f"at the kill; replaced in {replaced - killed:.1f} s")


def test_sigterm_shuts_serve_and_its_ray_down(servers):
    """Last: the module's Ray server exits 0 and leaves none of the processes it started (Ray's GCS,
    raylet, Serve controller and proxy, replicas) running."""
    import psutil

    _, ray_server = servers
    children = psutil.Process(ray_server.proc.pid).children(recursive=True)
    assert len(children) >= 4  # gcs_server, raylet, the Serve controller, proxy and replicas at least
    signalled = time.monotonic()
    ray_server.proc.send_signal(signal.SIGTERM)
    code = ray_server.proc.wait(timeout=90)
    took = time.monotonic() - signalled
    _, alive = psutil.wait_procs(children, timeout=20)
    assert code == 0, ray_server.tail()
    assert "Ray Serve shut down" in ray_server.tail()
    assert not alive, [(p.pid, p.name()) for p in alive]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{ray_server.url}/health", timeout=5)
    print(f"exited {took:.1f} s after SIGTERM")
