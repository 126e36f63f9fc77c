"""A real ``tinyrm train`` killed with SIGKILL, then started again with ``--resume``, ends bit-identical to
an uninterrupted run (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tinyrm.cli import main
from tinyrm.training.config import TrainConfig
from tinyrm.training.trainer import FitOutcome, make_result, resume_checkpoint, trim_metrics

# One torch thread in the killed process and in this one, where the reference and the resumed run go
# (a fresh interpreter costs 5-15 s of imports here): the same kernels, the same float results.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1"}
TINYRM = os.path.join(os.path.dirname(sys.executable), "tinyrm")
STEPS, SAVE = 8, 2  # 40 examples (20 length-balanced pairs, both orders) a batch of 8: the run spans 2 epochs


def train_args(model: str, data: Path, out: Path) -> list[str]:
    return ["train", "--model", model, "--data", str(data), "--output", str(out), "--batch-size", "8",
            "--micro-batch-size", "4", "--max-steps", str(STEPS), "--save-steps", str(SAVE), "--max-length", "96",
            "--lr", "1e-3", "--precision", "fp32", "--seed", "7"]


@contextlib.contextmanager
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def logged_steps(out: Path) -> dict[int, list[dict]]:
    steps: dict[int, list[dict]] = {}
    path = out / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:  # a line being written right now
            continue
        if "loss" in record:
            steps.setdefault(record["step"], []).append(record)
    return steps


def complete(checkpoint: Path) -> bool:
    return (checkpoint / "trainer_state.json").is_file()


def kill_after_checkpoint(victim: subprocess.Popen, out: Path) -> None:
    """SIGKILL between checkpoints: once checkpoint-2 is complete and step 3 logged (so the resumed run
    redoes steps the killed one had done)."""
    deadline = time.monotonic() + 180
    while not (complete(out / f"checkpoint-{SAVE}") and SAVE + 1 in logged_steps(out)):
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL


def test_a_train_killed_with_sigkill_resumes_to_the_uninterrupted_weights(tiny_bert, pairs_file, tmp_path,
                                                                          caplog):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    victim = subprocess.Popen([TINYRM, *train_args(tiny_bert, pairs_file, killed)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with one_torch_thread(), ThreadPoolExecutor(1) as pool:
            reference = pool.submit(main, train_args(tiny_bert, pairs_file, whole))  # meanwhile, uninterrupted
            kill_after_checkpoint(victim, killed)
            assert reference.result(timeout=300) == 0
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert not (killed / "model.safetensors").exists(), "the killed run got to its final save"
    last, step = resume_checkpoint(killed)
    assert SAVE <= step < STEPS
    # As if a later kill had cut a save short: weights half-written, no trainer_state.json.
    # `--resume` must continue from the last complete checkpoint (the Trainer alone fails on this one).
    cut = killed / f"checkpoint-{step + SAVE}"
    cut.mkdir()
    weights = (last / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 2])

    caplog.clear()
    with one_torch_thread():
        assert main([*train_args(tiny_bert, pairs_file, killed), "--resume"]) == 0
    assert f"--resume: skipping {cut}" in caplog.text

    a, b = load_file(str(whole / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    differ = [key for key in a if not torch.equal(a[key], b[key])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"
    # metrics.jsonl reads as one run: each step once (the killed run's records past its checkpoint
    # were dropped), with the uninterrupted run's losses.
    got, want = logged_steps(killed), logged_steps(whole)
    assert sorted(got) == list(range(1, STEPS + 1)) and all(len(v) == 1 for v in got.values())
    assert [got[s][0]["loss"] for s in got] == [want[s][0]["loss"] for s in got]


def test_resume_checkpoint_skips_cut_off_saves(tmp_path, caplog):
    for step, state in [(2, {"global_step": 2}), (4, {"global_step": 4}), (6, None), (8, "{\"global_st")]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if isinstance(state, dict):
            (folder / "trainer_state.json").write_text(json.dumps(state))
        elif state is not None:
            (folder / "trainer_state.json").write_text(state)  # the kill landed while writing it
    (tmp_path / "checkpoint-notes").mkdir()
    assert resume_checkpoint(tmp_path) == (tmp_path / "checkpoint-4", 4)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == \
        [f"--resume: skipping {tmp_path / 'checkpoint-8'}", f"--resume: skipping {tmp_path / 'checkpoint-6'}"]
    for folder in ("checkpoint-2", "checkpoint-4"):
        (tmp_path / folder / "trainer_state.json").unlink()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resume_checkpoint(tmp_path)


def test_trim_metrics_drops_what_the_resumed_run_logs_again(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6}, {"event": "note"}, {"step": 3, "loss": 0.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "lo')  # cut short by the kill
    trim_metrics(path, 2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:3]
    trim_metrics(tmp_path / "absent.jsonl", 2)  # nothing logged yet: nothing to do


def test_a_resumed_run_reports_the_speed_of_the_steps_it_trained():
    """8 steps of 8 examples, 2 of them before the resume: 48 examples in this process's 2 s."""
    outcome = FitOutcome(trainer=None, steps=8, examples=64, seconds=2.0, run_examples=48)
    result = make_result(TrainConfig(output="out"), outcome, 2, (1, 1))
    assert (result.examples, result.pairs) == (64, 32)  # the whole run
    assert (result.examples_per_second, result.pairs_per_second) == (24.0, 12.0)


def test_a_run_that_is_all_warm_up_says_so(tiny_bert, pairs_file, tmp_path, caplog):
    """transformers' warm-up starts at lr 0, so a one-step run trains nothing unless --warmup-ratio is 0."""
    def run(out: Path, *extra: str) -> dict:
        args = ["train", "--model", tiny_bert, "--data", str(pairs_file), "--output", str(out), "--batch-size", "4",
                "--micro-batch-size", "4", "--max-steps", "1", "--max-length", "64", "--save-steps", "0",
                "--lr", "1e-2", "--precision", "fp32", *extra]
        assert main(args) == 0
        return load_file(out / "model.safetensors")

    base = load_file(Path(tiny_bert) / "model.safetensors")
    with caplog.at_level("WARNING"):
        unmoved = run(tmp_path / "warm")
    assert "warm-up takes all 1 training step(s)" in caplog.text
    assert all(torch.equal(unmoved[k], base[k]) for k in base if k in unmoved)  # what the warning is about
    caplog.clear()
    with caplog.at_level("WARNING"):
        moved = run(tmp_path / "cold", "--warmup-ratio", "0")
    assert "warm-up takes all" not in caplog.text
    assert any(not torch.equal(moved[k], base[k]) for k in base if k in moved)
