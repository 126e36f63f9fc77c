"""Held-out accuracy during cloze training (``--eval-data FILE... --eval-steps N``).

The callback scores the dev pairs with the live weights (both orders, as ``tinyrm eval`` does) every
``eval_steps`` optimizer steps and at the end, prints one line, and appends an ``{"event": "eval"}``
record to the run's ``metrics.jsonl``. On real data the dev score of a small model moves by several
points between checkpoints (docs/training.md), so a curve says more than the last point alone. The
accuracies also go through the Trainer's log (``eval_accuracy``, ``eval_accuracy/<subset>``), so
``--report-to tensorboard`` draws that curve (``eval/accuracy``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..data import PreferencePair
from ..evaluation.evaluate import evaluate_pairs


class DevEvalCallback(TrainerCallback):
    def __init__(self, rm, pairs: Sequence[PreferencePair], every: int, metrics_path: str | Path,
                 batch_size: int = 32) -> None:
        self.rm, self.pairs, self.every = rm, list(pairs), every
        self.metrics_path, self.batch_size = Path(metrics_path), batch_size
        self.last: dict | None = None  # the full results of the latest evaluation
        self.trainer = None  # set by tinyrm.training.trainer.fit: the log the --report-to integrations read

    def attach(self, trainer) -> None:
        self.trainer = trainer

    def evaluate(self, step: int, model: torch.nn.Module | None) -> None:
        was_training = model.training if model is not None else False
        if model is not None:
            model.eval()
        self.rm.follow_weights()  # the Trainer moved them (to the GPU) after the model was built on the CPU
        try:
            with torch.no_grad():
                results = evaluate_pairs(self.rm, self.pairs, batch_size=self.batch_size)
        finally:
            if model is not None and was_training:
                model.train()
        record = {"event": "eval", "step": step, "accuracy": results["accuracy"], "n": results["n"],
                  "subsets": {name: row["accuracy"] for name, row in results.get("subsets", {}).items()}}
        self.last = results
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"eval at step {step}: accuracy {results['accuracy']:.4f} on {results['n']} dev pairs", flush=True)
        if self.trainer is not None:
            self.trainer.log({"eval_accuracy": results["accuracy"],
                              **{f"eval_accuracy/{name}": value for name, value in record["subsets"].items()}})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        done = state.global_step >= state.max_steps
        if (self.every > 0 and state.global_step % self.every == 0) or done:
            if state.is_world_process_zero:
                should_log = control.should_log
                self.evaluate(state.global_step, model)
                # Logging the dev scores cleared the flag; the Trainer's own log of this step (loss, lr) is to come.
                control.should_log = should_log
        return control
