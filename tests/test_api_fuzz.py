"""The HTTP API holds to its own ``/openapi.json``: Schemathesis, every check, against live ``tinyrm serve``.

Two real servers on loopback, each a ``tinyrm serve`` process with a key and small limits (lists at and
over them stay cheap): a pairwise model, whose document leaves ``/v1/score_steps`` out (it answers
400 there), and an untrained process model, whose document lists it. Schemathesis reads each server's
document and runs its checks (``-c all``: no 5xx, documented statuses, headers and bodies, schema-valid
requests accepted, schema-invalid ones rejected, undeclared methods answered 405, auth not ignored)
with the key on both, and without it on the process server (all 7 operations, every ``/v1`` and
``/v2`` one must give its documented 401). Bounded and reproducible: ``MAX_EXAMPLES`` per operation,
deterministic generation (no seed, no example database), one worker; then ``/health`` must answer.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

KEY = "fuzz-key"
MAX_EXAMPLES = 25  # per operation and phase: ~450-550 cases a run (most from the coverage phase), ~15 s
LIMITS = ["--max-items", "16", "--max-candidates", "6", "--max-documents", "5"]
BIN = Path(sys.executable).parent


def expect_503(cwd: Path) -> None:
    """Tell ``not_a_server_error`` that 503 is an expected answer: it is the documented, designed one to a deadline
    the client set too short (Schemathesis sends ``X-Request-Timeout: 5e-324``) or to overload, with Retry-After."""
    (cwd / "schemathesis.toml").write_text(
        '[checks.not_a_server_error]\nexpected-statuses = ["2xx", "3xx", "4xx", "503"]\n')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def tinyrm_serve(models: dict[str, str], logs: Path, options: list[str] = LIMITS, launcher: list[str] | None = None):
    """``tinyrm serve`` processes (one torch thread each, ``options`` added) on free loopback ports, started
    together; yields ``{name: base URL}`` once every one answers ``/health``."""
    procs, urls = {}, {}
    try:
        for name, model in models.items():
            port = free_port()
            urls[name] = f"http://127.0.0.1:{port}"
            with (logs / f"{name}.log").open("w") as out:
                procs[name] = subprocess.Popen(
                    [*(launcher or [str(BIN / "tinyrm")]), "serve", "--model", model, "--port", str(port),
                     "--api-key", KEY, "--threads", "1", "--log-level", "warning", *options],
                    stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        for name, proc in procs.items():
            while True:
                log = (logs / f"{name}.log").read_text()[-3000:]
                assert proc.poll() is None, f"tinyrm serve ({name}) exited:\n{log}"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{urls[name]}/health", timeout=5).status_code == 200:
                        break
                assert time.time() < deadline, f"tinyrm serve ({name}) did not start:\n{log}"
                time.sleep(0.25)
        yield urls
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def process_model(tiny_bert, tmp_path_factory) -> str:
    """An untrained process reward model folder (the tiny BERT with the process config): serves score_steps."""
    from tinyrm.process.train import build_model
    from tinyrm.train import TrainConfig

    directory = tmp_path_factory.mktemp("tiny-prm")
    build_model(TrainConfig(model=tiny_bert, data=[], output=str(directory), objective="process",
                            max_length=128)).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def servers(tiny_bert, process_model, tmp_path_factory):
    with tinyrm_serve({"pairwise": tiny_bert, "process": process_model}, tmp_path_factory.mktemp("logs")) as urls:
        yield urls


def test_the_document_tells_the_truth(servers):
    """What Schemathesis relies on, spelled out: per-kind endpoints, error bodies, limits, the key."""
    pairwise = httpx.get(f"{servers['pairwise']}/openapi.json").json()
    process = httpx.get(f"{servers['process']}/openapi.json").json()
    assert "/v1/score_steps" not in pairwise["paths"] and "/v1/score_steps" in process["paths"]
    r = httpx.post(f"{servers['pairwise']}/v1/score_steps", json={"problem": "p", "steps": ["s"]},
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and "does not score steps" in r.json()["error"]
    schemas = process["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    for path, item in process["paths"].items():
        if path.startswith("/v"):
            responses = item["post"]["responses"]
            assert {"200", "400", "401", "413", "415", "422", "503"} <= set(responses), path
            assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
            assert item["post"]["security"] == [{"bearer": []}]
    assert schemas["CompareBatchRequest"]["properties"]["items"]["maxItems"] == 16
    assert schemas["RankRequest"]["properties"]["candidates"]["maxItems"] == 6
    assert schemas["RerankRequest"]["properties"]["documents"]["maxItems"] == 5
    # An undeclared method is 405 with Allow, key or not, in the same error body.
    r = httpx.get(f"{servers['process']}/v1/compare")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json() == {"error": "Method Not Allowed"}


@pytest.mark.parametrize("kind, key", [("pairwise", True), ("process", True), ("process", False)],
                         ids=["pairwise-key", "process-key", "process-no-key"])
def test_schemathesis_finds_nothing(servers, kind, key, tmp_path):
    pytest.importorskip("schemathesis")
    url = servers[kind]
    command = [str(BIN / "schemathesis"), "run", f"{url}/openapi.json", "--checks", "all",
               "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic", "--workers", "1",
               "--suppress-health-check", "all", "--request-timeout", "60", "--continue-on-failure", "--no-color"]
    if key:
        command += ["--header", f"Authorization: Bearer {KEY}"]
    # Its own folder: Schemathesis writes .hypothesis/ and .schemathesis/ under the working directory.
    expect_503(tmp_path)
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_COLOR": "1"})
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis found failures (exit {run.returncode}):\n{report[-20000:]}"
    operations = 7 if kind == "process" else 6
    assert f"Tested: {operations}" in report, report[-3000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", report)
    assert cases and int(cases[1]) >= 100, report[-3000:]
    if key:  # e.g. "Authentication failed", or operations Schemathesis could not make valid requests for
        assert "Warnings:" not in report, report[-5000:]
    else:  # each of the 6 /v1, /v2 operations answered only its documented 401
        assert f"Authentication failed: {operations - 1} operations returned only 401/403" in report, report[-5000:]
    print(f"schemathesis {kind} {'with' if key else 'without'} the key: {cases[0]}")
    health = httpx.get(f"{url}/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"


# `tinyrm serve` with a model that takes 3 ms per pair on top of its own time: a 4,096-item request then
# needs over 12 s of model time (more than Schemathesis waits), whatever the machine's speed.
SLOW_PAIRS = """
import sys, time
from tinyrm.pairwise.model import RewardModel
compare_batch = RewardModel.compare_batch
def slow(self, items, *args, **kwargs):
    items = list(items)
    time.sleep(0.003 * len(items))
    return compare_batch(self, items, *args, **kwargs)
RewardModel.compare_batch = slow
from tinyrm.cli import main
sys.exit(main(sys.argv[1:]))
"""
RANDOM_EXAMPLES = 10  # per operation: random generation at the server's own limits, ~1 min on 2 cores


def test_schemathesis_random_mode_at_the_documented_limits(tiny_bert, tmp_path):
    """Schemathesis as a user runs it first: random generation, its default 10 s read timeout, against a server
    with the documented limits (4,096 items, 1 MB bodies). Large generated requests used to hold the model
    past the client's timeout (the model is slowed to 3 ms a pair: 4,096 items need over 12 s); with fair
    slices and a deadline under the client's (``--request-timeout 5``)
    every answer comes in time: scored, or a documented 503 with Retry-After (which ``not_a_server_error``
    is told to expect: it is the designed answer to a deadline the client set too short, e.g. 5e-324 s)."""
    pytest.importorskip("schemathesis")
    expect_503(tmp_path)
    with tinyrm_serve({"pairwise": tiny_bert}, tmp_path, ["--request-timeout", "5"],
                      [sys.executable, "-c", SLOW_PAIRS]) as urls:
        url = urls["pairwise"]
        assert httpx.get(f"{url}/health").json()["limits"]["max_items"] == 4096
        # Beside Schemathesis, another client keeps sending the documented maximum (each one more than the
        # deadline's worth of model time): Schemathesis's requests get their slices between its slices.
        stop, large = threading.Event(), []
        items = [{"prompt": f"question {i}?", "a": f"answer {i}", "b": "no idea"} for i in range(4096)]

        def keep_busy() -> None:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
                while not stop.is_set():
                    large.append(client.post("/v1/compare_batch", json={"items": items}).status_code)

        busy = threading.Thread(target=keep_busy, daemon=True)
        busy.start()
        command = [str(BIN / "schemathesis"), "run", f"{url}/openapi.json", "--checks", "all",
                   "--max-examples", str(RANDOM_EXAMPLES), "--header", f"Authorization: Bearer {KEY}", "--no-color"]
        try:
            run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                                 env={**os.environ, "NO_COLOR": "1"})
        finally:
            stop.set()
            busy.join(timeout=120)
        report = run.stdout + run.stderr
        assert run.returncode == 0, f"schemathesis found failures (exit {run.returncode}):\n{report[-20000:]}"
        assert large and set(large) == {503}, large  # each maximum request passed its 5 s deadline, none hung
        assert "Tested: 6" in report and "timed out" not in report, report[-5000:]
        cases = re.search(r"(\d+) generated, (\d+) passed", report)
        health = httpx.get(f"{url}/health", timeout=30).json()
        print(f"schemathesis random mode: {cases[0] if cases else report[-500:]}; {health['batching']}")
        assert health["status"] == "ok"
