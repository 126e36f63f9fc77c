"""Conversational SFT: continued masked-LM training on conversation text.

The paper lifted chat accuracy by first continuing ModernBERT's MLM pre-training on OpenAssistant
conversations. Rows are ``{"text": ...}`` or ``{"messages": [{"role", "content"}, ...]}``;
preference rows (``prompt`` + ``chosen``) are accepted too and read as the preferred dialogue.
A text longer than ``max_length`` tokens is cut into consecutive windows (none of it is lost), as
continued MLM pre-training does. The output folder is a plain masked LM, valid as ``tinyrm train --model``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..data import DataError, expand_sources, jsonl_lines, parse_json_line
from ..errors import UsageError, UserError

logger = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    model: str = "default"
    data: list[str] = field(default_factory=list)
    output: str = "runs/sft"
    lr: float = 5e-5
    epochs: float = 1.0
    batch_size: int = 32  # effective batch (gradient accumulation)
    micro_batch_size: int = 8
    max_length: int = 512
    max_steps: int = -1
    mlm_probability: float = 0.3  # ModernBERT's pre-training masking rate
    warmup_ratio: float = 0.05
    weight_decay: float = 1e-5
    seed: int = 42
    precision: str = "auto"  # auto | bf16 | fp32


@dataclass
class SFTResult:
    output: str
    texts: int
    sequences: int  # training sequences: a text longer than max_length gives several windows
    steps: int
    seconds: float
    final_loss: float | None


def render_messages(messages: object, where: str) -> str:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    lines = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: messages[{i}] needs a string 'content'")
        role = message.get("role")
        if role is not None and not isinstance(role, str):
            raise DataError(f"{where}: messages[{i}]: 'role' must be a string, got {type(role).__name__}")
        role = (role or "").strip().capitalize() or "User"
        lines.append(f"{role}: {message['content'].strip()}")
    return "\n\n".join(lines)


def row_text(row: object, where: str) -> str:
    """The training text of one JSONL row."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object")
    if isinstance(row.get("text"), str) and row["text"].strip():
        return row["text"]
    if "messages" in row:
        return render_messages(row["messages"], where)
    if isinstance(row.get("prompt"), str) and isinstance(row.get("chosen"), str):
        return f"{row['prompt'].strip()}\n\n{row['chosen'].strip()}"
    raise DataError(f"{where}: row has no non-empty 'text', no 'messages' and no 'prompt'/'chosen'")


def read_texts(sources: Sequence[str]) -> list[str]:
    texts: list[str] = []
    for path in expand_sources(sources):
        for number, _, line in jsonl_lines(path):
            where = f"{path}:{number}"
            try:
                row = parse_json_line(line)
            except ValueError as error:
                raise DataError(f"{where}: {error}") from None
            texts.append(row_text(row, where))
    if not texts:
        raise DataError(f"no text rows in {', '.join(sources)}")
    return texts


class TextDataset(Dataset):
    """The texts as training sequences of at most ``max_length`` tokens: a longer text is cut into
    consecutive windows (the tokenizer's overflowing tokens), each with its own special tokens."""

    def __init__(self, texts: Sequence[str], tokenizer, max_length: int):
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length, return_special_tokens_mask=True,
                            return_overflowing_tokens=True)
        self.rows = [{"input_ids": ids, "special_tokens_mask": special}
                     for ids, special in zip(encoded["input_ids"], encoded["special_tokens_mask"])]
        windows = Counter(encoded["overflow_to_sample_mapping"])
        self.split_texts = sum(1 for count in windows.values() if count > 1)
        if self.split_texts:
            logger.warning("%d text(s) longer than %d tokens were cut into windows: %d training sequences from %d "
                           "texts", self.split_texts, max_length, len(self.rows), len(texts))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def sft(config: SFTConfig) -> SFTResult:
    """Continue MLM training of ``config.model`` on ``config.data``; save an MLM to ``config.output``."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

    from ..backbone import load_mlm
    from ..training.arguments import bf16_available, check_length, gradient_accumulation, is_main_process, warmup_share

    check_length(config)  # --epochs 0 saved an untrained model, --max-steps 0 trained one step
    set_seed(config.seed)
    texts = read_texts(config.data)
    tokenizer, mlm = load_mlm(config.model, head_seed=None)
    if tokenizer.mask_token is None:
        raise ValueError(f"{config.model}: tokenizer has no mask token; masked-LM training needs one")
    positions = getattr(mlm.config, "max_position_embeddings", None)
    if positions is not None and config.max_length > positions:
        raise UsageError(f"--max-length {config.max_length} exceeds the model's {positions} positions")
    dataset = TextDataset(texts, tokenizer, config.max_length)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and bf16_available())
    output = Path(config.output)
    args = TrainingArguments(
        output_dir=str(output), per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=gradient_accumulation(config.batch_size, config.micro_batch_size, world_size),
        learning_rate=config.lr, weight_decay=config.weight_decay, num_train_epochs=config.epochs,
        max_steps=config.max_steps, lr_scheduler_type="linear", warmup_steps=warmup_share(config.warmup_ratio),
        optim="adamw_torch", bf16=use_bf16, use_cpu=not torch.cuda.is_available(), logging_steps=1,
        save_strategy="no", seed=config.seed, data_seed=config.seed, report_to="none",
        disable_tqdm=not is_main_process(), dataloader_num_workers=0,
        logging_nan_inf_filter=False,  # a diverged step must show as nan, not be logged as 0.0
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=config.mlm_probability,
                                               seed=config.seed)
    trainer = Trainer(model=mlm, args=args, train_dataset=dataset, data_collator=collator)
    start = time.perf_counter()
    state = trainer.train()
    seconds = time.perf_counter() - start
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    diverged = next((i + 1 for i, loss in enumerate(losses) if not math.isfinite(loss)), None)
    if diverged is not None:
        raise UserError(f"training diverged: the MLM loss is {losses[diverged - 1]} from step {diverged} on; nothing "
                        f"was saved to {output} (lower --lr, now {config.lr:g})")
    result = SFTResult(output=str(output), texts=len(texts), sequences=len(dataset), steps=state.global_step,
                       seconds=round(seconds, 2), final_loss=losses[-1] if losses else None)
    if trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(output)
        tokenizer.save_pretrained(output)
        record = {"sft": {k: v for k, v in asdict(config).items()}, "result": asdict(result), "losses": losses}
        (output / "sft.json").write_text(json.dumps(record, indent=2) + "\n")
    return result
