"""Training defaults that fit the backbone and the device, filled in where the user left a field unset.

The paper's settings (batch 256, length 512+) suit a GPU; on a CPU they give a handful of slow
steps and a model at chance. So ``TrainConfig`` leaves ``lr``, ``batch_size``, ``micro_batch_size``,
``max_length`` unset (None) and ``objective``/``read`` at "auto", and ``resolve_defaults`` picks:

* device: CPU -> 16 sequences per step, lr 1e-4, 256 tokens (measured on 2 cores, docs/training.md);
  GPU -> the paper's batch 256, lr 5e-5, 512 tokens.
* backbone: a checkpoint with a real MLM head trains the paper's cloze objective read at [MASK]; one
  without (the embedded sentence-embedding MiniLM: its head would be initialised randomly) gets the
  objective and read position measured best for it on the demo set (``HEADLESS``).

An explicit value (flag, recipe or Python argument) always wins.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

# For a backbone whose checkpoint has no MLM head. Measured on the demo set (docs/training.md,
# benchmarks/ablations.py): cloze read at [CLS] 0.9925, at [MASK] 0.79, classifier (mean) 0.990.
HEADLESS = {"objective": "cloze", "read": "cls"}
WITH_HEAD = {"objective": "cloze", "read": "mask"}
# Classifier objective: [CLS] pooling scored 0.552 on dev/hhh against 0.520 for mean (paradigms
# benchmark, docs/training.md), and it saves as a standard AutoModelForSequenceClassification on
# every architecture (mean pooling only on ModernBERT).
POOLING = "cls"

DEVICE_DEFAULTS = {
    "cpu": {"lr": 1e-4, "batch_size": 16, "micro_batch_size": 16, "max_length": 256},
    "cuda": {"lr": 5e-5, "batch_size": 256, "micro_batch_size": 32, "max_length": 512},
}


def device_kind() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _stored_keys(folder: Path) -> set[str] | None:
    """Tensor names in a local checkpoint (safetensors, sharded or not; else None = unknown)."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    single = folder / "model.safetensors"
    if single.is_file():
        with safe_open(str(single), framework="pt") as handle:
            return set(handle.keys())
    return None


def checkpoint_has_mlm_head(name_or_path: str | None) -> bool:
    """Whether the checkpoint stores MLM-head weights, judged without loading them.

    The architecture is built on the meta device to list its head parameters; the tied decoder
    matrix does not count (checkpoints often leave it out). Hub ids and checkpoints whose tensor
    names cannot be read are assumed to have a head (masked-LM checkpoints normally do).
    """
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM

    from .backbone import resolve_model_path

    folder = Path(resolve_model_path(name_or_path))
    stored = _stored_keys(folder) if folder.is_dir() else None
    if stored is None:
        return True
    with torch.device("meta"):
        model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(str(folder)))
    prefix = model.base_model_prefix + "."
    tied = {name for name, p in model.named_parameters(remove_duplicate=False)
            if p is model.get_input_embeddings().weight}
    head = {k for k in model.state_dict() if not k.startswith(prefix) and k not in tied}
    return bool(head & stored)


def resolve_defaults(config, announce: bool = True):
    """A copy of ``config`` (a ``TrainConfig``) with unset fields filled for its backbone and device."""
    updates: dict = {}
    if config.objective == "auto" or config.read == "auto":
        chosen = WITH_HEAD if checkpoint_has_mlm_head(config.model) else HEADLESS
        if config.objective == "auto":
            updates["objective"] = chosen["objective"]
        if config.read == "auto":
            updates["read"] = chosen["read"]
    if config.pooling == "auto":
        updates["pooling"] = POOLING
    device = device_kind()
    for name, value in DEVICE_DEFAULTS[device].items():
        if getattr(config, name) is None:
            updates[name] = value
    # A --batch-size below the device's micro-batch is one micro-batch of that size: the default must
    # not turn a step of 4 sequences into one of 16 (4x the activation memory and a different recipe).
    batch = updates.get("batch_size", config.batch_size)
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    if "micro_batch_size" in updates and batch < updates["micro_batch_size"] * world:
        updates["micro_batch_size"] = max(1, batch // world)
    if not updates:
        return config
    resolved = dataclasses.replace(config, **updates)
    if announce:
        # Only what applies to the objective being trained (pooling: classifier; read: cloze).
        irrelevant = {"pooling"} if resolved.objective != "classifier" else set()
        irrelevant |= {"read"} if resolved.objective not in ("cloze", "process", "outcome") else set()
        shown = ", ".join(f"{k}={v}" for k, v in updates.items() if k not in irrelevant)
        if shown:
            print(f"defaults for {config.model} on {device}: {shown}")
    return resolved
