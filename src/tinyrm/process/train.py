"""Training process (per-step) and outcome (per-solution) verdicts, with class-weighted cross-entropy."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..backbone import load_mlm, prepare_for_training
from ..config import RewardConfig
from ..data import DataError
from ..inference.packed import packed_mlm_supported
from ..inference.varlen import pack
from ..pairwise.model import ClozeScorer
from ..prompt import DEFAULT_PREFIX
from ..training.config import TrainConfig, TrainResult, backbone_config, recorded_options
from ..training.packing import packed_training
from ..training.trainer import arguments_for, finish, fit, make_result, report_parameters
from .data import ProcessRow, load_rows
from .model import ProcessRewardModel
from .prompt import (
    ANSWER_TOKENS,
    CONTEXTS,
    OBJECTIVES,
    PREFIXES,
    STEP_TEMPLATES,
    StepEncoded,
    StepEncoder,
    StepTemplate,
    collate,
)

logger = logging.getLogger(__name__)


def label_index(correct: bool) -> int:
    return 0 if correct else 1  # answer token 0 ("yes") means correct


class ProcessDataset(Dataset):
    """Encoded training examples: labelled steps (process) or whole solutions (outcome)."""

    def __init__(self, rows: Sequence[ProcessRow], encoder: StepEncoder, objective: str, context: str) -> None:
        self.examples: list[tuple[StepEncoded, list[int]]] = []
        self.truncated = 0
        for row in rows:
            problem_ids, step_ids = encoder.tokenize(row.question, row.steps)
            if objective == "outcome":
                encs = [encoder.encode_step(problem_ids, step_ids, len(step_ids) - 1)]
                labels = {len(step_ids) - 1: row.solution_correct}
            else:
                labels = {i: label for i, label in enumerate(row.labels) if label is not None}
                if not labels:
                    continue  # unlabelled steps are never trained on
                if context == "full":
                    encs = encoder.encode_full(problem_ids, step_ids, wanted=sorted(labels))
                else:
                    encs = [encoder.encode_step(problem_ids, step_ids, k) for k in sorted(labels)]
            for enc in encs:
                self.truncated += enc.truncated
                self.examples.append((enc, [label_index(labels[t]) for t in enc.targets]))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        enc, labels = self.examples[index]
        return {"input_ids": enc.input_ids, "encoding": enc, "labels": labels}

    def label_counts(self) -> tuple[int, int]:
        """(correct, incorrect) verdicts trained on."""
        flat = [label for _, labels in self.examples for label in labels]
        return flat.count(0), flat.count(1)


CLASS_WEIGHTINGS = ("balanced", "none")


def parse_class_weight(value: str | float | None) -> str | float:
    """A ``step_class_weight`` setting: ``"balanced"``, ``"none"`` or the positive weight of the
    incorrect class (the correct class then weighs 1), given as a number or a numeric string."""
    if value is None:
        return "none"
    if isinstance(value, str) and value.strip().lower() in CLASS_WEIGHTINGS:
        return value.strip().lower()
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = float("nan")
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"step_class_weight must be 'balanced', 'none' or a positive number "
                         f"(the weight of the incorrect class), got {value!r}")
    return weight


def class_weights(labels: Sequence[int], setting: str | float = "balanced") -> list[float] | None:
    """Cross-entropy weights ``[correct, incorrect]`` for label indices (0 correct, 1 incorrect).

    ``balanced``: ``n / (2 * n_class)``, scikit-learn's ``compute_class_weight("balanced")``, so
    each class contributes the same total weight; ``none``: None (the plain mean); a number: the
    incorrect class's weight, the correct class weighing 1. ``balanced`` with one class absent
    gives None (nothing to rebalance).
    """
    setting = parse_class_weight(setting)
    if setting == "none":
        return None
    if not isinstance(setting, str):
        return [1.0, float(setting)]
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(list(labels), dtype=np.int64)
    if not (y == 0).any() or not (y == 1).any():
        logger.warning("step_class_weight=balanced: only one class among %d labels, not reweighting", len(y))
        return None
    return [float(w) for w in compute_class_weight("balanced", classes=np.array([0, 1]), y=y)]


class WeightedClozeScorer(ClozeScorer):
    """A ``ClozeScorer`` whose loss is the class-weighted cross-entropy over the read masks.

    With ``weight = class_weight[label]`` per mask, the loss is ``sum(weight * ce) / sum(weight)``:
    ``F.cross_entropy(..., weight=class_weight)`` for the two-answer loss, and the same weighting
    of the whole-vocabulary cross-entropy for ``loss="full-vocab"``.
    """

    def __init__(self, mlm: torch.nn.Module, answer_ids: Sequence[int], class_weight: Sequence[float],
                 loss: str = "pair", read: str = "mask") -> None:
        super().__init__(mlm, answer_ids, loss=loss, read=read)
        if len(class_weight) != 2:
            raise ValueError(f"class_weight needs one weight per answer (2), got {len(class_weight)}")
        self.register_buffer("class_weight", torch.tensor([float(w) for w in class_weight]), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                mask_positions: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, mask_rows: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int | None = None, seq_lengths: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        packing = (position_ids, cu_seqlens, max_seqlen, seq_lengths)  # a packed batch (ProcessCollator(packed=True))
        if labels is None:
            return super().forward(input_ids, attention_mask, mask_positions, token_type_ids, None, mask_rows,
                                   *packing)
        full_vocab = self.loss_kind == "full-vocab"
        logits = self.read_logits(input_ids, attention_mask, mask_positions, token_type_ids, mask_rows, *packing,
                                  full_vocab=full_vocab)
        targets = self.answer_ids[labels] if full_vocab else labels
        per_mask = F.cross_entropy(logits.float(), targets, reduction="none")
        weights = self.class_weight[labels]
        loss = (per_mask * weights).sum() / weights.sum()
        return {"loss": loss, "logits": logits[:, self.answer_ids] if full_vocab else logits}


@dataclass
class ProcessCollator:
    pad_id: int
    packed: bool = False  # one token stream per micro-batch, every read mask in it (inference.varlen.pack)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        encodings = [f["encoding"] for f in features]
        batch = pack(encodings).inputs() if self.packed else collate(encodings, self.pad_id)
        batch["labels"] = torch.tensor([label for f in features for label in f["labels"]], dtype=torch.long)
        return batch


def process_settings(config) -> tuple[StepTemplate, str, tuple[str, str]]:
    """Template, instruction and answer tokens; the pairwise defaults are swapped for process ones."""
    template = STEP_TEMPLATES[config.objective]
    prefix = PREFIXES[config.objective] if config.prefix == DEFAULT_PREFIX else config.prefix
    answers = ANSWER_TOKENS if tuple(config.answer_tokens) == ("0", "1") else tuple(config.answer_tokens)
    return template, prefix, answers


def process_read(config) -> str:
    """Where verdicts are read: [CLS] only where each sequence holds one read mask (prefix context, or
    an outcome model) and the backbone's defaults ask for it; full-context windows read many masks."""
    read = getattr(config, "read", "mask")
    read = "mask" if read == "auto" else read
    if read == "cls" and getattr(config, "context", "prefix") == "full" and config.objective == "process":
        return "mask"
    return read


def build_model(config: TrainConfig) -> ProcessRewardModel:
    """Backbone (freezing / DoRA applied) wrapped as a ProcessRewardModel with the process config."""
    tokenizer, mlm = load_mlm(config.model, head_seed=None)
    model = prepare_for_training(mlm, backbone_config(config))
    template, prefix, answers = process_settings(config)
    context = getattr(config, "context", "prefix")
    reward_config = RewardConfig(
        objective=config.objective, template=template.to_dict(), prefix=prefix, answer_tokens=list(answers),
        max_length=config.max_length, both_orders=False, base_model=config.model, read=process_read(config),
        extra={"process": {"context": context},
               "train": recorded_options(config),
               "data": [str(d) for d in config.data]},  # the files, for the model card
    )
    return ProcessRewardModel(model, tokenizer, reward_config, device="cpu")


def train(config: TrainConfig) -> TrainResult:
    """``tinyrm train --objective process|outcome`` (``tinyrm.train.train`` dispatches here)."""
    from transformers import set_seed

    if config.objective not in OBJECTIVES:
        raise ValueError(f"tinyrm.process trains objectives {OBJECTIVES}, not {config.objective!r}")
    context = getattr(config, "context", "prefix")
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {', '.join(CONTEXTS)}, got {context!r}")
    weighting = parse_class_weight(getattr(config, "step_class_weight", "balanced"))
    set_seed(config.seed)
    report = load_rows(config.data, skip_bad_rows=config.skip_bad_rows)
    rm = build_model(config)
    parameters = report_parameters(rm.model)
    dataset = ProcessDataset(report.rows, rm.spec.encoder, config.objective, context)
    if not len(dataset):
        raise DataError(f"no labelled steps to train on in {', '.join(config.data)}")
    positives, negatives = dataset.label_counts()
    logger.info("%d examples: %d correct / %d incorrect verdicts", len(dataset), positives, negatives)
    weights = class_weights([0] * positives + [1] * negatives, weighting)
    rm.config.extra["step_class_weight"] = {
        "setting": weighting, "weights": None if weights is None else dict(zip(("correct", "incorrect"), weights))}
    if weights is None:
        scorer = ClozeScorer(rm.model, rm.answer_ids, loss=config.loss, read=rm.config.read)
    else:
        logger.info("class weights: correct %.4f, incorrect %.4f (%s)", *weights, weighting)
        scorer = WeightedClozeScorer(rm.model, rm.answer_ids, weights, loss=config.loss, read=rm.config.read)
    args = arguments_for(config)
    packed = packed_training(config, args.device, packed_mlm_supported(rm.model), rm.name)
    outcome = fit(scorer, dataset, ProcessCollator(rm.tokenizer.pad_token_id or 0, packed=packed), config, args)
    result = make_result(config, outcome, 1, parameters, truncated=dataset.truncated, skipped=report.skipped)

    def save(scorer) -> None:
        rm.model = scorer.mlm
        rm.config.extra["result"] = {**asdict(result), "correct_verdicts": positives, "incorrect_verdicts": negatives}
        rm.save_pretrained(config.output)

    finish(config, outcome, result, save)
    return result
