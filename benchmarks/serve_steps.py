"""The ``steps`` measure of ``serve_load.py --scenario under-load``: ``/v1/score_steps`` in the server's line.

A process checkpoint is served (``--steps-model DIR``; by default the embedded MiniLM trained one step on the
shared MR-GSM8K step file, synthetic steps without ``../shared/data``: its calls cost what a trained PRM's do)
``before`` (the unsliced scheduler, ``serve_load.BEFORE``: one call takes a whole step request, as
``/v1/score_steps`` ran before it joined the batcher, which also scored every step twice) and ``after`` (the
defaults). While one client keeps a long solution in flight (``--steps-large`` steps, prefix context: one
sequence per step, each up to the model's 512 tokens), ``--latency-clients`` closed-loop clients send 1-pair
``/v1/compare`` requests and as many send short solutions (``SHORT_STEPS`` steps); reported are their p50 / p99
latencies, idle ones first, and the long request's time.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from serve_lib import SHARED, Server, fmt, idle_p50_ms, launch, wait_idle, warm_up, while_large

SHORT_STEPS = 3
STEP_FILE = SHARED / "process" / "mrgsm8k-steps.jsonl"


@dataclass
class StepBodies:
    pairs: list[bytes]  # 1-pair /v1/compare bodies
    short: list[bytes]  # SHORT_STEPS-step /v1/score_steps bodies
    large: bytes  # one long solution


def step_rows() -> list[dict]:
    """MR-GSM8K rows with their step labels (synthetic ones, labelled alike, without ``../shared/data``)."""
    if STEP_FILE.is_file():
        return [json.loads(line) for line in STEP_FILE.read_text().splitlines()[:256] if line.strip()]
    rows = []
    for i in range(64):
        a, b = 3 + i, 4 + i % 7
        wrong = i % 3 == 0
        steps = [f"Step 1: We start with {a}.", f"Step 2: Adding {b} gives {a + b + wrong}.",
                 f"Step 3: The answer is: {a + b + wrong}"]
        rows.append({"id": f"synthetic-{i}", "question": f"Tom has {a} apples and buys {b} more. How many?",
                     "steps": steps, "first_error_step": 2 if wrong else None, "solution_correct": not wrong})
    return rows


def bodies(rows: list[dict], pairs: list[dict], large_steps: int) -> StepBodies:
    """The long solution chains the rows' steps under the first row's question, as a long chain of thought would."""
    chained = [step for row in rows for step in row["steps"]]
    while len(chained) < large_steps:
        chained += chained
    short = [json.dumps({"problem": r["question"], "steps": r["steps"][:SHORT_STEPS]}).encode() for r in rows
             if len(r["steps"]) >= SHORT_STEPS]
    return StepBodies([json.dumps(p).encode() for p in pairs], short,
                      json.dumps({"problem": rows[0]["question"], "steps": chained[:large_steps]}).encode())


def process_checkpoint(rows: list[dict], directory: Path) -> str:
    """The embedded model trained one optimizer step as a process reward model (a servable checkpoint)."""
    from tinyrm.train import TrainConfig, train

    data = directory / "steps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:64]))
    output = directory / "prm"
    train(TrainConfig(model="default", data=[str(data)], output=str(output), objective="process", batch_size=8,
                      micro_batch_size=8, max_steps=1, max_length=512, save_steps=0))
    return str(output)


def measure(config, server: Server, step_bodies: StepBodies) -> dict:
    """Idle latencies of both small kinds, then the same while the long solution is in flight (the first long
    request is waited for unless ``--abandon-large``; the small clients run until it and ``--duration`` end)."""
    small = [("/v1/compare", step_bodies.pairs, 1), ("/v1/score_steps", step_bodies.short, SHORT_STEPS)]
    idle_pair, idle_short = idle_p50_ms(server, config, small, 1)
    wait_idle(server, 1, config.request_timeout_s)
    (pair_res, short_res), large_res, wall = while_large(
        server, config, ("/v1/score_steps", [step_bodies.large], config.steps_large), small, config.latency_clients)
    return {**pair_res.summary("pair_"), **short_res.summary("steps_"), "idle_pair_p50_ms": idle_pair,
            "idle_steps_p50_ms": idle_short, "large_outcomes": dict(large_res.outcomes),
            "large_mean_s": statistics.mean(large_res.latencies) if large_res.latencies else None,
            "wall_s": wall, "peak_rss_mb": server.tree.peak / 2**20}


def run(config, common: list[str], before: list[str], pairs: list[dict], progress) -> list[dict]:
    """The ``steps`` rows: the same process checkpoint served after, then before (same forward batch)."""
    rows = step_rows()
    step_bodies = bodies(rows, pairs, config.steps_large)
    workdir = Path(tempfile.mkdtemp(prefix="serve-steps-"))
    try:
        model = config.steps_model
        if model is None:
            progress("steps: training the embedded model one step as a process reward model")
            model = process_checkpoint(rows, workdir)
        args = [*common, "--threads", str(config.threads)]
        results, forward = [], None
        for scheduler in ("after", "before"):
            extra = [*before, "--forward-batch-size", str(forward)] if scheduler == "before" else []
            progress(f"steps {scheduler}: starting tinyrm serve --model {model} {' '.join(args + extra)}")
            with launch(model, [*args, *extra], startup_timeout_s=config.startup_timeout_s) as server:
                forward = forward or server.health()["limits"]["forward_batch_size"]
                warm_up(server, pairs)
                label = config.steps_model or "the embedded model trained one step on MR-GSM8K"
                row = {"measure": "steps", "engine": "local", "scheduler": scheduler, "model": label,
                       "large_steps": config.steps_large, **measure(config, server, step_bodies)}
            results.append(row)
            progress(f"steps {scheduler}: 1-pair p50 {row['pair_p50_ms']:.0f} ms, {SHORT_STEPS}-step p50 "
                     f"{row['steps_p50_ms']:.0f} ms, long {row['large_outcomes']}")
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(config, rows: list[dict]) -> None:
    steps = [r for r in rows if r["measure"] == "steps"]
    if not steps:
        return
    print(f"\n### 1-pair /v1/compare and {SHORT_STEPS}-step /v1/score_steps latency while a {config.steps_large}-step "
          f"/v1/score_steps solution is in flight ({config.latency_clients} closed-loop clients of each kind, "
          f"a process checkpoint: {steps[0]['model']})\n")
    print("| rows | idle p50 ms: pair / steps | pair requests | pair p50 ms | pair p99 ms | step requests "
          "| steps p50 ms | steps p99 ms | small not 200 | long: 200 / 503 / abandoned | long mean s | wall s |")
    print("|---|---|" + "---:|" * 10)
    for r in steps:
        failed = sum(r["pair_outcomes"].values()) - r["pair_requests"] + sum(r["steps_outcomes"].values()) \
            - r["steps_requests"]
        long = r["large_outcomes"]
        print(f"| {r['scheduler']} | {fmt(r['idle_pair_p50_ms'])} / {fmt(r['idle_steps_p50_ms'])} "
              f"| {r['pair_requests']} | {fmt(r['pair_p50_ms'])} | {fmt(r['pair_p99_ms'])} | {r['steps_requests']} "
              f"| {fmt(r['steps_p50_ms'])} | {fmt(r['steps_p99_ms'])} | {failed} "
              f"| {long.get('200', 0)} / {long.get('503', 0)} / {long.get('abandoned', 0)} "
              f"| {fmt(r['large_mean_s'], '.1f')} | {r['wall_s']:.0f} |")
