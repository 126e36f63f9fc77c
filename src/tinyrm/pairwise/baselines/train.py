"""Training the classifier and token baselines with the shared Trainer (``tinyrm.training``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ...arrow import PairTable, has_token_types, tokenizer_signature
from ...backbone import load_mlm, prepare_for_training
from ...config import RewardConfig
from ...data import PreferencePair
from ...inference.varlen import pack
from ...model_card import SEQUENCE_CLASSIFICATION
from ...training.config import TrainConfig, TrainResult, backbone_config, recorded_options
from ...training.packing import packed_training
from ...training.trainer import arguments_for, finish, fit, make_result, report_parameters
from ..data import EncodedRows, load_training_pairs, pair_group_size
from .classifier import (
    SequenceClassifierScorer,
    classifier_head_modules,
    load_sequence_classifier,
    native_classifier_supported,
    prepare_tokenizer,
)
from .encoding import ResponseEncoded, ResponseEncoder, pad_responses
from .model import save_baseline
from .token import LEGACY_FORMAT, OBJECTIVES, POOLINGS, BaselineScorer, freeze_unused

logger = logging.getLogger(__name__)
SIDES = ("chosen", "rejected")


class PairDataset(EncodedRows):
    """One example per preference pair: the chosen and the rejected sequence, label 0, as Arrow rows.

    ``pairs``: a :class:`PairTable` (encoded once per table and settings, then reused from the
    cache) or Python pairs (encoded in memory).
    """

    def __init__(self, pairs: PairTable | Sequence[PreferencePair], encoder: ResponseEncoder) -> None:
        import datasets

        table = pairs if isinstance(pairs, PairTable) else PairTable.from_pairs(pairs)
        self.with_types = has_token_types(encoder.tokenizer)
        names = ("input_ids", "response_mask", "token_type_ids") if self.with_types else ("input_ids", "response_mask")
        columns = {f"{side}_{name}": datasets.List(datasets.Value("int32" if name == "input_ids" else "int8"))
                   for side in SIDES for name in names}
        columns.update({f"{side}_truncated": datasets.Value("bool") for side in SIDES})
        columns.update(truncated=datasets.Value("int8"), length=datasets.Value("int32"))

        def encode(batch: dict, indices: list[int]) -> dict:
            out: dict[str, list] = {name: [] for name in columns}
            for prompt, chosen, rejected in zip(batch["prompt"], batch["chosen"], batch["rejected"]):
                encodings = encoder.encode(prompt, chosen), encoder.encode(prompt, rejected)
                for side, enc in zip(SIDES, encodings):
                    for name in (*names, "truncated"):
                        out[f"{side}_{name}"].append(getattr(enc, name))
                out["truncated"].append(sum(int(enc.truncated) for enc in encodings))
                out["length"].append(sum(len(enc.input_ids) for enc in encodings))
            return out

        settings = {"tokenizer": tokenizer_signature(encoder.tokenizer), "max_length": encoder.max_length,
                    "elision_marker": encoder.elision_marker}
        super().__init__(table.encode("responses", encode, datasets.Features(columns), settings,
                                      desc="tokenising (responses)"), table.keepalive)

    def example(self, index: int) -> tuple[ResponseEncoded, ResponseEncoded]:
        """(chosen, rejected) of pair ``index`` as the encoder returned them."""
        row = self.rows[index]
        return tuple(  # type: ignore[return-value]
            ResponseEncoded(row[f"{side}_input_ids"], row[f"{side}_token_type_ids"] if self.with_types else None,
                            row[f"{side}_response_mask"], row[f"{side}_truncated"])
            for side in SIDES)

    def __getitem__(self, index: int) -> dict:
        chosen, rejected = self.example(index)
        return {"chosen": chosen, "rejected": rejected, "labels": 0}  # lengths: the "length" column


@dataclass
class PairCollator:
    """Right-padded rows, or with ``packed`` one packed batch (``Packed.inputs``); chosen, rejected, ..."""

    pad_id: int
    packed: bool = False

    def __call__(self, features: list[dict]) -> dict:
        rows = [enc for f in features for enc in (f["chosen"], f["rejected"])]  # chosen, rejected, ...
        batch = pack(rows).inputs() if self.packed else pad_responses(rows, self.pad_id)
        batch["labels"] = torch.zeros(len(features), dtype=torch.long)
        return batch


def build_scorer(config: TrainConfig) -> tuple[BaselineScorer | SequenceClassifierScorer, object, RewardConfig]:
    """Backbone (freezing / DoRA as for cloze) + a fresh head, and the config to save with it.

    The classifier objective is a one-label ``AutoModelForSequenceClassification`` wherever the
    architecture's own head pools as asked (``native_classifier_supported``); else (BERT-family
    ``mean``) and for ``token``, the masked LM + tinyrm's head.
    """
    if config.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {config.objective!r}")
    if config.objective == "classifier" and config.pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {config.pooling!r}")
    settings = backbone_config(config)
    extra: dict = {"pooling": config.pooling}
    if config.objective == "classifier" and native_classifier_supported(config.model, config.pooling):
        tokenizer, model = load_sequence_classifier(config.model, config.pooling)
        separator = prepare_tokenizer(tokenizer)
        if separator is not None:
            extra["separator"] = separator
        backbone = prepare_for_training(model, settings, modules_to_save=classifier_head_modules(model))
        scorer: BaselineScorer | SequenceClassifierScorer = SequenceClassifierScorer(backbone, config.pooling)
        extra["format"] = SEQUENCE_CLASSIFICATION
    else:
        if config.objective == "classifier":
            logger.warning("%s: transformers has no sequence-classification head with %s pooling for this "
                           "architecture; the model is saved in tinyrm's head format (tinyrm loads it, plain "
                           "transformers does not). --pooling cls gives a standard checkpoint.",
                           config.model, config.pooling)
        tokenizer, mlm = load_mlm(config.model, head_seed=None)
        scorer = BaselineScorer(prepare_for_training(mlm, settings), config.objective, config.pooling)
        freeze_unused(scorer)
        extra["format"] = LEGACY_FORMAT
    extra["train"] = recorded_options(config)  # not the runtime options (attention)
    extra["data"] = [str(d) for d in config.data]
    reward_config = RewardConfig(
        objective=config.objective, max_length=config.max_length, base_model=config.model, both_orders=False,
        extra=extra,
    )
    return scorer, tokenizer, reward_config


def train(config: TrainConfig) -> TrainResult:
    """Train a classifier / token baseline with the shared Trainer (``fit``) and save it."""
    from transformers import set_seed

    if config.loss != "pair" or config.order != "both":
        logger.warning("--loss/--order apply to the cloze objective only; ignored for %s", config.objective)
    set_seed(config.seed)  # before the head is created
    args = arguments_for(config)
    with args.main_process_first(desc="reading the data"):  # rank 0 fills the cache, the others reuse it
        table = load_training_pairs(config)
    scorer, tokenizer, reward_config = build_scorer(config)
    parameters = report_parameters(scorer)
    with args.main_process_first(desc="tokenising"):
        dataset = PairDataset(table, ResponseEncoder(tokenizer, config.max_length))
    dataset.group_size = pair_group_size(dataset.group_size, config)
    packed = packed_training(config, args.device, scorer.packable, config.model)
    outcome = fit(scorer, dataset, PairCollator(tokenizer.pad_token_id or 0, packed=packed), config, args)
    result = make_result(config, outcome, 1, parameters, truncated=dataset.truncated, skipped=table.skipped)

    def save(module: BaselineScorer | SequenceClassifierScorer) -> None:
        reward_config.extra["result"] = asdict(result)
        save_baseline(config.output, module, tokenizer, reward_config)

    finish(config, outcome, result, save)
    return result
