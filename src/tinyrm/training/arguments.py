"""``TrainingArguments`` shared by every objective, and the device facts they depend on."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from ..errors import UsageError
from .config import TrainConfig

logger = logging.getLogger(__name__)


def bf16_available() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gradient_accumulation(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    per_step = micro_batch_size * world_size
    steps = max(1, round(batch_size / per_step))
    if steps * per_step != batch_size:
        logger.warning("effective batch %d is not a multiple of %d; using %d", batch_size, per_step, steps * per_step)
    return steps


# The function telling whether an integration's package is installed, where its name is not is_<name>_available.
_AVAILABLE = {"azure_ml": "is_azureml_available", "comet_ml": "is_comet_available", "flyte": "is_flytekit_available"}
# What to install for the integrations tinyrm ships an extra for.
_EXTRAS = {"tensorboard": "pip install 'tinyrm[tensorboard]'"}


def report_to(value: str | Sequence[str] | None) -> str | list[str]:
    """``TrainConfig.report_to`` checked for ``TrainingArguments.report_to``: "none", "all", or a list of the
    integrations the installed transformers knows, each with its package installed (``UsageError`` otherwise,
    before any data is read). Names may also come comma-separated."""
    names = [value] if isinstance(value, str) or value is None else list(value)
    names = [part.strip() for name in names for part in str(name or "none").split(",") if part.strip()]
    if names in ([], ["none"]):
        return "none"
    if names == ["all"]:
        return "all"
    from transformers.integrations import integration_utils

    known = list(integration_utils.INTEGRATION_TO_CALLBACK)
    if "none" in names or "all" in names:
        raise UsageError("--report-to: none and all stand alone")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"--report-to: unknown integration {', '.join(unknown)}; choose none, all, or from "
                         f"{', '.join(known)}")
    for name in names:
        available = getattr(integration_utils, _AVAILABLE.get(name, f"is_{name}_available"), None)
        if callable(available) and not available():
            hint = _EXTRAS.get(name, f"install the {name} package")
            raise UsageError(f"--report-to {name}: its package is not installed ({hint})")
    return list(dict.fromkeys(names))


def warmup_share(ratio: float) -> float:
    """``--warmup-ratio`` for ``TrainingArguments.warmup_steps``, which reads a value under 1 as a share of the
    steps and 1 or more as a step count: 1.0 would silently mean one step, so only [0, 1) is a ratio."""
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"--warmup-ratio must be in [0, 1) (a share of the training steps), got {ratio:g}")
    return ratio


class RunLength(Protocol):
    """What ``check_length`` reads: a ``TrainConfig`` or sft's ``SFTConfig``."""

    max_steps: int
    epochs: float


def check_length(config: RunLength) -> None:
    """How long to train: ``--max-steps`` N >= 1 optimizer steps, or -1 (the default: ``--epochs`` decides), and
    ``--epochs`` > 0. ``UsageError`` otherwise: the Trainer would save an untrained model for ``--epochs 0``
    and train one step for ``--max-steps 0``."""
    if config.max_steps != -1 and config.max_steps < 1:
        raise UsageError(f"--max-steps must be a number of optimizer steps >= 1, or -1 (the default: --epochs "
                         f"decides), got {config.max_steps}")
    if not 0 < config.epochs < math.inf:  # nan fails too
        raise UsageError(f"--epochs must be a number of passes over the data > 0, got {config.epochs:g}")


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
        warmup_steps=warmup_share(config.warmup_ratio),
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
        report_to=report_to(config.report_to),
        remove_unused_columns=False,
        label_names=["labels"],
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
    )


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
