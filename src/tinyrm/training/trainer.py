"""Training with the Hugging Face Trainer, shared by every objective (DDP-ready under accelerate/torchrun).

AdamW with decoupled weight decay (none on biases and norms: the Trainer's own grouping), linear
decay after warmup, effective batch via gradient accumulation, clipping at 1.0, bf16 autocast
where the hardware has it, seeded data order, resumable checkpoints, ``metrics.jsonl``. Each
objective brings its model (forward returns ``{"loss", "logits"}``), dataset and collator to :func:`fit`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..backbone import parameter_counts
from .arguments import gradient_accumulation, is_main_process, training_arguments
from .config import TrainConfig, TrainResult
from .sampler import GroupedSampler

logger = logging.getLogger(__name__)


def fresh_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names (in ``model``) of the parameters ``load_mlm`` initialised because the checkpoint lacked them."""
    keys = set()
    for module in model.modules():
        keys.update(getattr(module, "tinyrm_initialised_keys", ()))
    found = set()
    for name, _ in model.named_parameters():
        plain = name.replace(".modules_to_save.default", "").replace(".original_module", "")
        if any(plain == key or plain.endswith("." + key) for key in keys):
            found.add(name)
    return found


def scale_fresh_parameters(optimizer: torch.optim.Optimizer, model: torch.nn.Module, scale: float) -> int:
    """Move freshly initialised parameters into their own groups at ``scale`` x the learning rate.

    Done before the first step (no optimizer state yet) and before the scheduler records each
    group's initial rate, so warmup and decay apply to both groups alike."""
    fresh = {id(p) for n, p in model.named_parameters() if n in fresh_parameter_names(model)}
    moved_groups = []
    for group in optimizer.param_groups:
        moved = [p for p in group["params"] if id(p) in fresh]
        if moved:
            group["params"] = [p for p in group["params"] if id(p) not in fresh]
            moved_groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": moved,
                                 "lr": group["lr"] * scale})
    for group in moved_groups:
        optimizer.add_param_group(group)
    return sum(len(g["params"]) for g in moved_groups)


def _make_trainer_classes():
    """Defined lazily so importing tinyrm does not import the Trainer stack."""
    from transformers import Trainer, TrainerCallback

    class RewardTrainer(Trainer):
        """Trainer that also tracks pairwise accuracy and saves tied weights safely."""

        def __init__(self, *args, pair_batches: bool = True, head_lr_scale: float = 1.0, **kwargs):
            self.pair_batches = pair_batches
            self.head_lr_scale = head_lr_scale
            super().__init__(*args, **kwargs)
            self._correct: torch.Tensor | int = 0  # a device tensor once counted: no host wait per step
            self._seen = 0

        def create_optimizer(self, model=None):
            optimizer = super().create_optimizer(model)
            if self.head_lr_scale != 1.0:
                scale_fresh_parameters(optimizer, self.model if model is None else model, self.head_lr_scale)
            return optimizer

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            group_size = getattr(dataset, "group_size", 1) if self.pair_batches else 1
            if group_size <= 1:
                if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
                    from transformers.trainer_pt_utils import LengthGroupedSampler

                    # The lengths column of the Arrow table, rather than decoding every row.
                    return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                                lengths=dataset.lengths)
                return super()._get_train_sampler(train_dataset)
            if self.args.per_device_train_batch_size % group_size:
                raise ValueError(f"micro batch size {self.args.per_device_train_batch_size} must be a multiple of "
                                 f"{group_size} so that both orders of a pair (and, with --length-balance, "
                                 "both pairs of a couple) share a batch")
            by_length = self.args.train_sampling_strategy == "group_by_length"
            lengths = example_lengths(dataset) if by_length else None
            # Megabatches as in LengthGroupedSampler: 50 batches' worth, counted in groups.
            megabatch = 50 * self.args.train_batch_size * self.args.gradient_accumulation_steps // group_size
            return GroupedSampler(len(dataset), group_size, self.args.data_seed or self.args.seed, lengths, megabatch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            predictions = outputs["logits"].detach().argmax(dim=-1)
            self._correct = (predictions == inputs["labels"]).sum() + self._correct
            self._seen += inputs["labels"].numel()
            return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

        def log(self, logs: dict, start_time: float | None = None) -> None:
            if "loss" in logs and self._seen > 0:
                counts = torch.stack([torch.as_tensor(self._correct).to(self.args.device),
                                      torch.tensor(self._seen, device=self.args.device)])
                counts = self.accelerator.reduce(counts, reduction="sum")
                logs["accuracy"] = round(counts[0].item() / max(counts[1].item(), 1), 4)
                self._correct, self._seen = 0, 0
            super().log(logs, start_time)

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            from safetensors.torch import save_file

            output_dir = output_dir or self.args.output_dir
            if not self.args.should_save:
                return
            os.makedirs(output_dir, exist_ok=True)
            state = state_dict if state_dict is not None else self.accelerator.unwrap_model(self.model).state_dict()
            # Tied tensors (decoder = embeddings) share memory, which safetensors refuses.
            state = {k: v.detach().clone().contiguous() for k, v in state.items()}
            save_file(state, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})

    class MetricsCallback(TrainerCallback):
        """Appends every log record to ``<output>/metrics.jsonl``."""

        def __init__(self, path: Path) -> None:
            self.path = path

        def on_log(self, args, state, control, logs=None, **kwargs):
            # The --eval-data scores reach the Trainer's log (for --report-to) but are recorded here by
            # their callback, as an "eval" record with every subset (pairwise/dev_eval.py).
            if state.is_world_process_zero and logs and "eval_accuracy" not in logs:
                record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
                with self.path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")

    class ProgressCallback(TrainerCallback):
        """tqdm bar showing loss and accuracy."""

        def __init__(self) -> None:
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            warmup = args.get_warmup_steps(state.max_steps)
            if state.is_world_process_zero and 0 < state.max_steps <= warmup:
                # transformers' warm-up starts at lr 0: a 1-step run (--max-steps 1) trains nothing
                logger.warning("warm-up takes all %d training step(s) (--warmup-ratio %g), the first at learning "
                               "rate 0: the weights barely move; --warmup-ratio 0 for a run this short",
                               state.max_steps, args.warmup_steps)
            if state.is_world_process_zero:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step")

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.4f}", acc=f"{logs.get('accuracy', float('nan')):.3f}")

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return RewardTrainer, MetricsCallback, ProgressCallback


def report_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable, total = parameter_counts(model)
    if is_main_process():
        print(f"parameters: {trainable:,} trainable / {total:,} total ({100 * trainable / total:.2f}%)")
    return trainable, total


@dataclass
class FitOutcome:
    trainer: object
    steps: int
    examples: int  # over the whole run, the steps before a --resume included
    seconds: float
    run_examples: int | None = None  # trained by this process (rates divide these by seconds); None: examples


def resume_checkpoint(output: Path) -> tuple[Path, int]:
    """The ``checkpoint-N`` that ``--resume`` continues from, and its step: the highest complete one.

    The Trainer writes a checkpoint's ``trainer_state.json`` last (after weights, optimizer, scheduler
    and RNG states), so a folder without it, or with it cut short, is a save that a kill interrupted:
    skipped with a warning. (The Trainer's own ``resume_from_checkpoint=True`` takes the highest
    number, complete or not, and fails on it.)"""
    found = [(int(p.name.split("-", 1)[1]), p) for p in output.glob("checkpoint-*")
             if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    if not found:
        raise FileNotFoundError(f"--resume: no checkpoint-* folder in {output}")
    for _, path in sorted(found, reverse=True):
        try:
            return path, int(json.loads((path / "trainer_state.json").read_text())["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("--resume: skipping %s, a save cut off before its trainer_state.json was written", path)
    raise FileNotFoundError(f"--resume: no complete checkpoint in {output} (every checkpoint-* was cut off mid-save)")


def trim_metrics(path: Path, step: int) -> None:
    """Drop what a killed run logged after the checkpoint a resume starts from (the resumed run logs
    those steps again), and a last line cut short by the kill; records without a step stay."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int) or record["step"] <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    path.write_text("".join(kept), encoding="utf-8")


def example_lengths(dataset: Dataset) -> list[int]:
    """Each example's length: the dataset's ``lengths`` (an Arrow column), else from every row."""
    if hasattr(dataset, "lengths"):
        return list(dataset.lengths)
    return [len(dataset[i]["input_ids"]) for i in range(len(dataset))]


def arguments_for(config: TrainConfig):
    """The run's ``TrainingArguments``; built before the data so that ``args.main_process_first()``
    lets rank 0 tokenise into the shared cache while the other ranks wait (with the DDP timeout)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = gradient_accumulation(config.batch_size, config.micro_batch_size, world_size)
    return training_arguments(config, Path(config.output), accumulation)


def fit(model: torch.nn.Module, dataset: Dataset, collator, config: TrainConfig, args=None,
        callbacks: Sequence = ()) -> FitOutcome:
    """Run the Trainer on ``model`` (forward returns {"loss", "logits"}; inputs carry "labels").

    Shared by every objective: progress bar, metrics.jsonl, checkpoints and ``--resume``. ``args``:
    the run's :func:`arguments_for` when the caller built them already; ``callbacks``: extra
    ``TrainerCallback``s (e.g. the dev-set evaluation).
    """
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as HFProgress

    set_seed(config.seed)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    checkpoint, resumed_step = resume_checkpoint(output) if config.resume else (None, 0)
    if checkpoint is not None and is_main_process():
        trim_metrics(output / "metrics.jsonl", resumed_step)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args = args if args is not None else arguments_for(config)
    accumulation = args.gradient_accumulation_steps
    RewardTrainer, MetricsCallback, TqdmCallback = _make_trainer_classes()
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=dataset,
        data_collator=collator, callbacks=[MetricsCallback(output / "metrics.jsonl"), TqdmCallback(), *callbacks],
        pair_batches=config.pair_batches, head_lr_scale=config.head_lr_scale,
    )
    for callback in (HFProgress, PrinterCallback):
        trainer.remove_callback(callback)
    for callback in callbacks:  # callbacks that log through the Trainer (--report-to) get hold of it
        attach = getattr(callback, "attach", None)
        if callable(attach):
            attach(trainer)
    start = time.perf_counter()
    state = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    seconds = time.perf_counter() - start
    per_step = config.micro_batch_size * accumulation * world_size
    examples = state.global_step * per_step
    if config.max_steps < 0:
        examples = min(examples, len(dataset) * math.ceil(config.epochs))
    run_examples = max(examples - resumed_step * per_step, 0)
    return FitOutcome(trainer=trainer, steps=state.global_step, examples=examples, seconds=seconds,
                      run_examples=run_examples)


def make_result(config: TrainConfig, outcome: FitOutcome, per_pair: int, parameters: tuple[int, int],
                truncated: int = 0, skipped: int = 0) -> TrainResult:
    """``per_pair``: training examples per preference pair (2 when both orders are shown)."""
    seconds = max(outcome.seconds, 1e-9)
    trained = outcome.examples if outcome.run_examples is None else outcome.run_examples
    return TrainResult(
        output=str(config.output), steps=outcome.steps, examples=outcome.examples,
        pairs=outcome.examples // per_pair, seconds=round(outcome.seconds, 2),
        examples_per_second=round(trained / seconds, 2),
        pairs_per_second=round(trained / per_pair / seconds, 2),
        trainable_parameters=parameters[0], total_parameters=parameters[1],
        truncated_examples=truncated, skipped_rows=skipped,
    )


def finish(config: TrainConfig, outcome: FitOutcome, result: TrainResult, save) -> None:
    """On the main process: ``save(unwrapped_model)`` and the final metrics record."""
    trainer = outcome.trainer
    if trainer.is_world_process_zero():
        save(trainer.accelerator.unwrap_model(trainer.model))
        with (Path(config.output) / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps({"event": "train_end", **asdict(result)}) + "\n")
