"""Training on preference pairs with the Hugging Face Trainer (DDP-ready under accelerate/torchrun).

AdamW with decoupled weight decay (none on biases and norms: the Trainer's own grouping), linear
decay after warmup, effective batch via gradient accumulation, clipping at 1.0, bf16 autocast
where the hardware has it, seeded data order, resumable checkpoints, ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from .backbone import BackboneConfig, load_mlm, parameter_counts, prepare_for_training
from .data import LoadReport, PreferencePair, load_pairs, stratified_sample
from .defaults import resolve_defaults
from .model import RewardConfig, RewardModel, check_read, pad_batch
from .prompt import DEFAULT_PREFIX, ClozeEncoder, Encoded, get_template, prefix_for_domain

logger = logging.getLogger(__name__)


# Objectives other than the cloze one live in their own modules, each exposing
# ``train(config: TrainConfig) -> TrainResult`` and ``load(path, device) -> RewardModel-like``.
OBJECTIVE_MODULES: dict[str, str] = {
    "cloze": "tinyrm.train",
    "classifier": "tinyrm.baselines",
    "token": "tinyrm.baselines",
    "process": "tinyrm.process",
    "outcome": "tinyrm.process",
    "route": "tinyrm.route",  # built by `tinyrm route`, not trained; loads a routed bundle
}


def objective_module(name: str):
    import importlib

    if name not in OBJECTIVE_MODULES:
        raise ValueError(f"unknown objective {name!r}; choose from {sorted(OBJECTIVE_MODULES)}")
    return importlib.import_module(OBJECTIVE_MODULES[name])


@dataclass
class TrainConfig:
    model: str = "default"
    data: list[str] = field(default_factory=list)
    output: str = "runs/tinyrm"
    # "auto" (and every None below): chosen for the backbone and device by tinyrm.defaults.
    objective: str = "auto"  # auto | one of OBJECTIVE_MODULES
    pooling: str = "auto"  # classifier objective: auto | cls | mean
    context: str = "prefix"  # process objective: prefix | full (see tinyrm.process)
    step_class_weight: str = "balanced"  # process/outcome: balanced | none | a float weight of the "incorrect" class
    prefix: str = DEFAULT_PREFIX
    # {"domain": prefix}: each row's `domain` picks its instruction; others use `prefix` (cloze objective).
    domain_prefixes: dict[str, str] | None = None
    template: str = "flan"
    answer_tokens: tuple[str, str] = ("0", "1")
    read: str = "auto"  # cloze: where the MLM head reads the answer, auto | mask | cls (RewardConfig.read)
    lr: float | None = None
    epochs: float = 1.0
    batch_size: int | None = None  # effective batch, reached by gradient accumulation
    micro_batch_size: int | None = None
    max_length: int | None = None
    max_steps: int = -1
    warmup_ratio: float = 0.05
    weight_decay: float = 1e-5
    max_grad_norm: float = 1.0
    dora_rank: int = 0
    dora_alpha: float | None = None
    dora_targets: list[str] | None = None
    freeze_layers: int = 0
    order: str = "both"  # both | random
    loss: str = "pair"  # pair | full-vocab
    precision: str = "auto"  # auto | bf16 | fp32
    seed: int = 42
    save_steps: int = 50
    resume: bool = False
    skip_bad_rows: bool = False
    max_pairs: int = 0  # 0 = every pair; else a seeded sample with an equal share per domain
    # Off by default: batches of similar length were measured to cost accuracy (demo 0.915 vs 0.9925
    # for cloze read at [CLS], docs/training.md); on for speed when padding dominates.
    group_by_length: bool = False
    # Both orders of a pair in the same batch (GroupedSampler); False shuffles every example on its own.
    pair_batches: bool = True
    # Learning-rate multiplier for parameters the checkpoint did not have (an initialised MLM head).
    head_lr_scale: float = 1.0


class ClozeDataset(Dataset):
    """Pre-encoded training examples; each pair in both orders (or one seeded random order).

    ``domain_prefixes``: a pair whose ``domain`` is a key is encoded with that instruction; pairs
    without a domain, or of an unmapped one, with the encoder's own prefix.
    """

    def __init__(self, pairs: Sequence[PreferencePair], encoder: ClozeEncoder, order: str, seed: int,
                 domain_prefixes: dict[str, str] | None = None):
        if order not in ("both", "random"):
            raise ValueError(f"order must be 'both' or 'random', got {order!r}")
        rng = random.Random(seed)
        self.examples: list[tuple[Encoded, int]] = []
        self.truncated = 0
        for pair in pairs:
            prefix = prefix_for_domain(pair.domain, domain_prefixes, encoder.prefix)
            flips = (False, True) if order == "both" else (rng.random() < 0.5,)
            for flipped in flips:
                a, b = (pair.rejected, pair.chosen) if flipped else (pair.chosen, pair.rejected)
                enc = encoder.encode(pair.prompt, a, b, prefix=prefix)
                self.truncated += enc.truncated
                self.examples.append((enc, int(flipped)))  # label = index of the chosen response

        # Both orders of a pair are consecutive examples; GroupedSampler keeps them in one batch.
        self.group_size = 2 if order == "both" else 1

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        enc, label = self.examples[index]
        return {"input_ids": enc.input_ids, "encoding": enc, "labels": label}


class GroupedSampler(Sampler[int]):
    """Seeded shuffle of groups of ``group_size`` consecutive examples, each group kept together.

    With a pair's two orders in the same micro-batch, the labels of every batch are balanced and the
    part of the gradient that only moves the answer bias ("0" vs "1") cancels within the step; what
    is left is the content of the responses. Shuffled singly, each batch's label mix is random and
    that bias swings from step to step, which drowns the content signal of a freshly initialised head
    (measured in docs/training.md). ``group_by_length`` sorts groups by length within megabatches of
    ``megabatch`` groups, like transformers' LengthGroupedSampler.
    """

    def __init__(self, n_examples: int, group_size: int, seed: int, lengths: Sequence[int] | None = None,
                 megabatch: int = 0) -> None:
        if n_examples % group_size:
            raise ValueError(f"{n_examples} examples do not split into groups of {group_size}")
        self.n_groups, self.group_size, self.seed = n_examples // group_size, group_size, seed
        self.lengths, self.megabatch, self.epoch = lengths, megabatch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_groups * self.group_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        groups = torch.randperm(self.n_groups, generator=generator).tolist()
        if self.lengths is not None and self.megabatch > 1:
            size = self.megabatch
            groups = [g for start in range(0, len(groups), size)
                      for g in sorted(groups[start:start + size], key=lambda g: -self.lengths[g * self.group_size])]
        for group in groups:
            yield from range(group * self.group_size, (group + 1) * self.group_size)


@dataclass
class ClozeCollator:
    pad_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_batch([f["encoding"] for f in features], self.pad_id)
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch


def bf16_available() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
            self._correct = torch.zeros((), dtype=torch.long)
            self._seen = torch.zeros((), dtype=torch.long)

        def create_optimizer(self, model=None):
            optimizer = super().create_optimizer(model)
            if self.head_lr_scale != 1.0:
                scale_fresh_parameters(optimizer, self.model if model is None else model, self.head_lr_scale)
            return optimizer

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            group_size = getattr(dataset, "group_size", 1) if self.pair_batches else 1
            if group_size <= 1:
                return super()._get_train_sampler(train_dataset)
            if self.args.per_device_train_batch_size % group_size:
                raise ValueError(f"micro batch size {self.args.per_device_train_batch_size} must be a multiple of "
                                 f"{group_size} so that both orders of a pair share a batch")
            by_length = self.args.train_sampling_strategy == "group_by_length"
            lengths = [len(dataset[i]["input_ids"]) for i in range(len(dataset))] if by_length else None
            # Megabatches as in LengthGroupedSampler: 50 batches' worth, counted in groups.
            megabatch = 50 * self.args.train_batch_size * self.args.gradient_accumulation_steps // group_size
            return GroupedSampler(len(dataset), group_size, self.args.data_seed or self.args.seed, lengths, megabatch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            predictions = outputs["logits"].detach().argmax(dim=-1)
            self._correct += (predictions == inputs["labels"]).sum().cpu()
            self._seen += inputs["labels"].numel()
            return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

        def log(self, logs: dict, start_time: float | None = None) -> None:
            if "loss" in logs and self._seen.item() > 0:
                counts = torch.stack([self._correct, self._seen]).to(self.args.device)
                counts = self.accelerator.reduce(counts, reduction="sum")
                logs["accuracy"] = round(counts[0].item() / max(counts[1].item(), 1), 4)
                self._correct.zero_()
                self._seen.zero_()
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
            if state.is_world_process_zero and logs:
                record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
                with self.path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")

    class ProgressCallback(TrainerCallback):
        """tqdm bar showing loss and accuracy."""

        def __init__(self) -> None:
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
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


def gradient_accumulation(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    per_step = micro_batch_size * world_size
    steps = max(1, round(batch_size / per_step))
    if steps * per_step != batch_size:
        logger.warning("effective batch %d is not a multiple of %d; using %d", batch_size, per_step, steps * per_step)
    return steps


@dataclass
class TrainResult:
    output: str
    steps: int
    examples: int
    pairs: int
    seconds: float
    examples_per_second: float
    pairs_per_second: float
    trainable_parameters: int
    total_parameters: int
    truncated_examples: int
    skipped_rows: int


def load_training_pairs(config: TrainConfig) -> LoadReport:
    """``config.data``, cut to ``config.max_pairs`` by a domain-stratified seeded sample when set."""
    report = load_pairs(config.data, skip_bad_rows=config.skip_bad_rows)
    if config.max_pairs and config.max_pairs < len(report.pairs):
        report.pairs = stratified_sample(report.pairs, config.max_pairs, config.seed)
    return report


def build_model(config: TrainConfig) -> RewardModel:
    """Backbone with freezing/DoRA applied, wrapped as a RewardModel carrying the prompt config."""
    config = resolve_defaults(config, announce=False)
    tokenizer, mlm = load_mlm(config.model)
    model = prepare_for_training(
        mlm,
        BackboneConfig(
            model=config.model, dora_rank=config.dora_rank, dora_alpha=config.dora_alpha,
            dora_targets=config.dora_targets, freeze_layers=config.freeze_layers,
        ),
    )
    reward_config = RewardConfig(
        template=get_template(config.template).to_dict(), prefix=config.prefix,
        answer_tokens=list(config.answer_tokens), max_length=config.max_length, base_model=config.model,
        read=check_read(config.read),
        extra={"train": {k: v for k, v in asdict(config).items() if k not in ("data",)}},
        domain_prefixes=dict(config.domain_prefixes) if config.domain_prefixes else None,
    )
    return RewardModel(model, tokenizer, reward_config, device="cpu")


def training_arguments(config: TrainConfig, output: Path, accumulation: int):
    """TrainingArguments shared by every objective (AdamW, linear decay, clipping, bf16, seeds)."""
    from transformers import TrainingArguments

    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and bf16_available())
    return TrainingArguments(
        output_dir=str(output),
        per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        lr_scheduler_type="linear",
        warmup_steps=config.warmup_ratio,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch",
        bf16=use_bf16,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=1,
        save_strategy="steps" if config.save_steps > 0 else "no",
        save_steps=max(config.save_steps, 1),
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        remove_unused_columns=False,
        label_names=["labels"],
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
    )


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def report_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable, total = parameter_counts(model)
    if is_main_process():
        print(f"parameters: {trainable:,} trainable / {total:,} total ({100 * trainable / total:.2f}%)")
    return trainable, total


@dataclass
class FitOutcome:
    trainer: object
    steps: int
    examples: int
    seconds: float


def fit(model: torch.nn.Module, dataset: Dataset, collator, config: TrainConfig) -> FitOutcome:
    """Run the Trainer on ``model`` (forward returns {"loss", "logits"}; inputs carry "labels").

    Shared by every objective: progress bar, metrics.jsonl, checkpoints and ``--resume``.
    """
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as HFProgress

    set_seed(config.seed)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    if config.resume and not any(p.name.startswith("checkpoint-") for p in output.iterdir()):
        raise FileNotFoundError(f"--resume: no checkpoint-* folder in {output}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = gradient_accumulation(config.batch_size, config.micro_batch_size, world_size)
    RewardTrainer, MetricsCallback, TqdmCallback = _make_trainer_classes()
    trainer = RewardTrainer(
        model=model, args=training_arguments(config, output, accumulation), train_dataset=dataset,
        data_collator=collator, callbacks=[MetricsCallback(output / "metrics.jsonl"), TqdmCallback()],
        pair_batches=config.pair_batches, head_lr_scale=config.head_lr_scale,
    )
    for callback in (HFProgress, PrinterCallback):
        trainer.remove_callback(callback)
    start = time.perf_counter()
    state = trainer.train(resume_from_checkpoint=True if config.resume else None)
    seconds = time.perf_counter() - start
    examples = state.global_step * config.micro_batch_size * accumulation * world_size
    if config.max_steps < 0:
        examples = min(examples, len(dataset) * math.ceil(config.epochs))
    return FitOutcome(trainer=trainer, steps=state.global_step, examples=examples, seconds=seconds)


def make_result(config: TrainConfig, outcome: FitOutcome, per_pair: int, parameters: tuple[int, int],
                truncated: int = 0, skipped: int = 0) -> TrainResult:
    """``per_pair``: training examples per preference pair (2 when both orders are shown)."""
    seconds = max(outcome.seconds, 1e-9)
    return TrainResult(
        output=str(config.output), steps=outcome.steps, examples=outcome.examples,
        pairs=outcome.examples // per_pair, seconds=round(outcome.seconds, 2),
        examples_per_second=round(outcome.examples / seconds, 2),
        pairs_per_second=round(outcome.examples / per_pair / seconds, 2),
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


def train(config: TrainConfig) -> TrainResult:
    """Train a reward model on ``config.data`` and save it to ``config.output``."""
    config = resolve_defaults(config, announce=is_main_process())
    if config.objective != "cloze":
        return objective_module(config.objective).train(config)
    from transformers import set_seed

    set_seed(config.seed)  # before the model is built: an initialised MLM head is seeded too
    report = load_training_pairs(config)
    rm = build_model(config)
    parameters = report_parameters(rm.model)
    dataset = ClozeDataset(report.pairs, rm.encoder, config.order, config.seed, config.domain_prefixes)
    outcome = fit(rm.scorer(loss=config.loss), dataset, ClozeCollator(rm.tokenizer.pad_token_id or 0), config)
    result = make_result(config, outcome, 2 if config.order == "both" else 1, parameters,
                         truncated=dataset.truncated, skipped=report.skipped)

    def save(scorer) -> None:
        rm.model = scorer.mlm
        rm.config.extra.update(result=asdict(result), data=[str(d) for d in config.data])  # data: model card
        rm.save_pretrained(config.output)

    finish(config, outcome, result, save)
    return result
